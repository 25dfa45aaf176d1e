//! A FUSE file system that forgets what was not fsynced, to model a power cut (after LazyFS,
//! which does this for real databases). It runs in the test process over a backing directory:
//!
//! - Metadata goes to the backing directory at once: create, mkdir, rename, unlink, rmdir,
//!   chmod/chown, truncate. A name, a rename or a truncation survives a cut whether or not
//!   anything was fsynced (ext4 with `data=ordered` after its journal commit is close to this).
//! - File data does not: each write lands in that inode's overlay of dirty 4 KiB pages (with the
//!   size the writers see) and reaches the backing file only when the inode is fsynced
//!   (`fsync` or `fdatasync` on *any* handle of it). Reads see backing + overlay.
//! - [`LazyFs::drop_unsynced`] is the power cut: every overlay is discarded, so each file's data
//!   and size revert to what its backing file holds.
//! - Files are opened with `direct_io` and the kernel's writeback cache stays off, so every read
//!   and write reaches this code (otherwise a read after a cut would come from the page cache),
//!   and attributes are never cached (a size must revert at the cut).
//!
//! Not modelled: metadata that is lost (an unsynced directory entry or rename surviving is the
//! lenient choice; a stricter model would lose them too), torn or reordered page writes within
//! an unsynced range (all or nothing per cut), a failing fsync, hard links, symlinks, xattrs,
//! and POSIX locks (flock is left to the kernel, which handles it locally). Setting times is
//! accepted and ignored. With [`LazyFs::set_ignore_fsync`] fsyncs do nothing: a disk that lies,
//! or an agent that never syncs — what the test must be able to tell from a working one.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
/// Nothing is cached by the kernel: sizes change behind its back at a cut.
const TTL: Duration = Duration::ZERO;

/// One inode. Inode numbers are never reused, so a name unlinked and made again is a new inode
/// (the kernel may still hold the old one).
struct Node {
    /// The path under the backing root; `None` once unlinked (open handles still work).
    path: Option<PathBuf>,
    /// Dirty pages by index, each as the writers see the whole page.
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The size the writers see while pages are dirty (`None`: the backing file's).
    size: Option<u64>,
    /// The modification time of the last write (the backing file's is older until an fsync).
    mtime: Option<SystemTime>,
}

struct Handle {
    ino: u64,
    /// The backing file, read-write whatever the open asked (an fsync through a read-only
    /// handle must still write the overlay out).
    file: Arc<File>,
}

/// What was lost at one cut.
#[derive(Debug, Default, Clone)]
pub struct Cut {
    /// Per file (numeric names folded into `#`: `blobs/#`): files with dirty data, dirty KiB.
    pub lost: BTreeMap<String, (u64, u64)>,
}

impl Cut {
    pub fn kib(&self) -> u64 {
        self.lost.values().map(|(_, kib)| kib).sum()
    }
}

#[derive(Default)]
struct State {
    root: PathBuf,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    /// Directory listings, taken at opendir: a listing changing while it is read must neither
    /// skip nor repeat a name (the agent lists `blobs/` while sled writes there).
    dirs: HashMap<u64, Vec<(u64, FileType, std::ffi::OsString)>>,
    next_fh: u64,
    ignore_fsync: bool,
    /// fsync/fdatasync calls per file (numeric names folded), `dir:` for directories.
    fsyncs: BTreeMap<String, u64>,
}

/// The file system, shared between the FUSE thread and the test.
#[derive(Clone)]
pub struct LazyFs {
    state: Arc<Mutex<State>>,
}

/// A mounted [`LazyFs`]; unmounted when dropped.
pub struct Mounted {
    pub fs: LazyFs,
    pub mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

/// Why this machine cannot mount a [`LazyFs`], if it cannot: no `/dev/fuse` to open.
pub fn unavailable() -> Option<String> {
    match OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => None,
        Err(e) => Some(format!(
            "cannot open /dev/fuse ({e}): FUSE needs the device and root"
        )),
    }
}

/// `blobs/123` → `blobs/#`, `snap.00AB12CD.generating` → `snap.#.generating`: files sled
/// numbers, counted as one.
fn fold(path: &Path) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in path
        .display()
        .to_string()
        .chars()
        .chain(std::iter::once('/'))
    {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        // Hex-looking words ("db") stay; the numbers sled makes are all digits or long.
        let numeric =
            run.len() >= 8 || (!run.is_empty() && run.chars().all(|c| c.is_ascii_digit()));
        out.push_str(if numeric { "#" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn kind_of(meta: &std::fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs as u32)
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

impl State {
    fn real(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.nodes
            .get(&ino)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    fn ino_for(&mut self, rel: PathBuf) -> u64 {
        if let Some(&ino) = self.by_path.get(&rel) {
            return ino;
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        self.by_path.insert(rel.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                path: Some(rel),
                pages: BTreeMap::new(),
                size: None,
                mtime: None,
            },
        );
        ino
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = None;
            }
        }
    }

    fn attr(&self, ino: u64, meta: &std::fs::Metadata) -> FileAttr {
        let node = self.nodes.get(&ino);
        let size = node.and_then(|n| n.size).unwrap_or(meta.len());
        let mtime = node
            .and_then(|n| n.mtime)
            .unwrap_or_else(|| time(meta.mtime(), meta.mtime_nsec()));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime,
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(meta),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    /// The attributes of `ino`, through its open handle `fh` if given (it may be unlinked).
    fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Errno> {
        let meta = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some(handle) => handle.file.metadata(),
            None => std::fs::symlink_metadata(self.real(&self.path(ino)?)),
        }
        .map_err(errno)?;
        Ok(self.attr(ino, &meta))
    }

    fn open_backing(&mut self, ino: u64, file: File) -> u64 {
        self.next_fh += 1;
        let fh = self.next_fh;
        self.handles.insert(
            fh,
            Handle {
                ino,
                file: Arc::new(file),
            },
        );
        fh
    }

    /// The size the writers of `ino` see.
    fn size(&self, ino: u64, file: &File) -> std::io::Result<u64> {
        match self.nodes.get(&ino).and_then(|n| n.size) {
            Some(size) => Ok(size),
            None => Ok(file.metadata()?.len()),
        }
    }

    /// Writes `ino`'s dirty pages to its backing file through `file`.
    fn sync(&mut self, ino: u64, file: &File) -> std::io::Result<()> {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return Ok(());
        };
        if let Some(size) = node.size {
            for (&index, page) in &node.pages {
                let start = index * PAGE;
                if start < size {
                    let len = (size - start).min(PAGE) as usize;
                    file.write_all_at(&page[..len], start)?;
                }
            }
            file.set_len(size)?;
        }
        node.pages.clear();
        node.size = None;
        Ok(())
    }

    /// Applies a truncation (already done on the backing file) to `ino`'s overlay.
    fn truncate_overlay(&mut self, ino: u64, size: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.pages.retain(|&index, _| index * PAGE < size);
        if let Some(page) = node.pages.get_mut(&(size / PAGE)) {
            page[(size % PAGE) as usize..].fill(0);
        }
        node.size = (!node.pages.is_empty()).then_some(size);
        node.mtime = Some(SystemTime::now());
    }

    /// How the fsync counts name inode `ino`: `name` of its path, or "(unlinked)".
    fn node_key(&self, ino: INodeNo, name: impl Fn(&Path) -> String) -> String {
        self.nodes
            .get(&ino.0)
            .and_then(|n| n.path.as_deref())
            .map_or("(unlinked)".into(), name)
    }

    fn count_fsync(&mut self, key: String) {
        *self.fsyncs.entry(key).or_default() += 1;
    }
}

fn read_backing(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break, // past the backing file's end: zeros (the buffer's)
            n => done += n,
        }
    }
    Ok(())
}

impl LazyFs {
    /// Mounts a new file system over `backing` at `mountpoint` (both existing directories).
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<Mounted> {
        let fs = LazyFs {
            state: Arc::new(Mutex::new(State {
                root: backing.to_path_buf(),
                next_ino: 1,
                ..Default::default()
            })),
        };
        {
            let mut state = fs.lock();
            state.by_path.insert(PathBuf::new(), 1);
            state.nodes.insert(
                1,
                Node {
                    path: Some(PathBuf::new()),
                    pages: BTreeMap::new(),
                    size: None,
                    mtime: None,
                },
            );
        }
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::Subtype("lazyfs".into()),
        ];
        let session = fuser::spawn_mount(fs.clone(), mountpoint, &config)?;
        Ok(Mounted {
            fs,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// A poisoned lock is taken anyway: a FUSE thread that stops answering would hang the test.
    /// Removes `name` in `parent` from the backing directory at once (metadata is not held
    /// back) with `remove`, and forgets what was unsynced in it.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: fn(&std::path::Path) -> std::io::Result<()>,
    ) {
        let mut state = self.lock();
        let result = state.path(parent.0).and_then(|p| {
            let rel = p.join(name);
            remove(&state.real(&rel)).map_err(errno)?;
            state.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The power cut: forgets every byte not fsynced; returns what was lost.
    pub fn drop_unsynced(&self) -> Cut {
        let mut state = self.lock();
        let mut cut = Cut::default();
        for node in state.nodes.values_mut() {
            if !node.pages.is_empty() {
                let key = node.path.as_deref().map_or("(unlinked)".into(), fold);
                let entry = cut.lost.entry(key).or_default();
                entry.0 += 1;
                entry.1 += node.pages.len() as u64 * PAGE / 1024;
            }
            node.pages.clear();
            node.size = None;
            node.mtime = None;
        }
        cut
    }

    /// From now on fsync and fdatasync succeed without writing anything.
    pub fn set_ignore_fsync(&self, ignore: bool) {
        self.lock().ignore_fsync = ignore;
    }

    /// fsync/fdatasync calls so far per file (numeric names folded into `#`; `dir:` for
    /// directories).
    pub fn fsyncs(&self) -> BTreeMap<String, u64> {
        self.lock().fsyncs.clone()
    }

    fn created(&self, parent: INodeNo, name: &OsStr) -> Result<(u64, FileAttr), Errno> {
        let mut state = self.lock();
        let rel = state.path(parent.0)?.join(name);
        let meta = std::fs::symlink_metadata(state.real(&rel)).map_err(errno)?;
        let ino = state.ino_for(rel);
        Ok((ino, state.attr(ino, &meta)))
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.created(parent, name) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        let fh = fh.map(|f| f.0);
        let result = (|| -> Result<FileAttr, Errno> {
            let handle_file = fh
                .and_then(|fh| state.handles.get(&fh))
                .map(|h| Arc::clone(&h.file));
            if let Some(mode) = mode {
                let perms = std::fs::Permissions::from_mode(mode & 0o7777);
                match &handle_file {
                    Some(file) => file.set_permissions(perms),
                    None => std::fs::set_permissions(state.real(&state.path(ino.0)?), perms),
                }
                .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(state.real(&state.path(ino.0)?), uid, gid)
                    .map_err(errno)?;
            }
            if let Some(size) = size {
                // A truncation is metadata: it reaches the backing file at once.
                match &handle_file {
                    Some(file) => file.set_len(size),
                    None => OpenOptions::new()
                        .write(true)
                        .open(state.real(&state.path(ino.0)?))
                        .and_then(|f| f.set_len(size)),
                }
                .map_err(errno)?;
                state.truncate_overlay(ino.0, size);
            }
            state.getattr(ino.0, fh)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = {
            let state = self.lock();
            state.path(parent.0).and_then(|p| {
                std::fs::DirBuilder::new()
                    .mode(mode & !umask & 0o7777)
                    .create(state.real(&p.join(name)))
                    .map_err(errno)
            })
        };
        match made.and_then(|()| self.created(parent, name)) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |path| std::fs::remove_file(path));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |path| std::fs::remove_dir(path));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        let mut state = self.lock();
        let result = (|| -> Result<(), Errno> {
            let from = state.path(parent.0)?.join(name);
            let to = state.path(newparent.0)?.join(newname);
            std::fs::rename(state.real(&from), state.real(&to)).map_err(errno)?;
            state.forget_path(&to);
            // The node moves with its overlay: a rename of unsynced data is durable, the data
            // is not (the classic empty file after tmp → rename without an fsync).
            let moved: Vec<(PathBuf, u64)> = state
                .by_path
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, &ino)| (p.clone(), ino))
                .collect();
            for (old, ino) in moved {
                let new = to.join(old.strip_prefix(&from).unwrap_or(Path::new("")));
                let new = if old == from { to.clone() } else { new };
                state.by_path.remove(&old);
                state.by_path.insert(new.clone(), ino);
                if let Some(node) = state.nodes.get_mut(&ino) {
                    node.path = Some(new);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.lock();
        // O_TRUNC arrives as a setattr before this (no atomic_o_trunc), O_APPEND is the
        // kernel's: the backing file is simply opened read-write.
        let opened = state.path(ino.0).and_then(|p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(state.real(&p))
                .map_err(errno)
        });
        match opened {
            Ok(file) => {
                let fh = state.open_backing(ino.0, file);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.lock();
        let result = (|| -> Result<(u64, FileAttr), Errno> {
            let rel = state.path(parent.0)?.join(name);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .create_new(flags & libc::O_EXCL != 0)
                .truncate(flags & libc::O_TRUNC != 0)
                .mode(mode & !umask & 0o7777)
                .open(state.real(&rel))
                .map_err(errno)?;
            let meta = file.metadata().map_err(errno)?;
            let ino = state.ino_for(rel);
            if flags & libc::O_TRUNC != 0 {
                state.truncate_overlay(ino, 0);
            }
            let fh = state.open_backing(ino, file);
            Ok((fh, state.attr(ino, &meta)))
        })();
        match result {
            Ok((fh, attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.lock();
        let result = (|| -> std::io::Result<Vec<u8>> {
            let file = &state
                .handles
                .get(&fh.0)
                .ok_or(std::io::Error::from_raw_os_error(libc::EBADF))?
                .file;
            let end = (offset + u64::from(size)).min(state.size(ino.0, file)?);
            if end <= offset {
                return Ok(Vec::new());
            }
            let mut buf = vec![0; (end - offset) as usize];
            read_backing(file, &mut buf, offset)?;
            if let Some(node) = state.nodes.get(&ino.0) {
                for (&index, page) in node.pages.range(offset / PAGE..=(end - 1) / PAGE) {
                    let start = (index * PAGE).max(offset);
                    let stop = (index * PAGE + PAGE).min(end);
                    buf[(start - offset) as usize..(stop - offset) as usize].copy_from_slice(
                        &page[(start - index * PAGE) as usize..(stop - index * PAGE) as usize],
                    );
                }
            }
            Ok(buf)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.lock();
        let result = (|| -> std::io::Result<()> {
            let file = Arc::clone(
                &state
                    .handles
                    .get(&fh.0)
                    .ok_or(std::io::Error::from_raw_os_error(libc::EBADF))?
                    .file,
            );
            let size = state.size(ino.0, &file)?;
            let node = state
                .nodes
                .get_mut(&ino.0)
                .ok_or(std::io::Error::from_raw_os_error(libc::ENOENT))?;
            let end = offset + data.len() as u64;
            for index in offset / PAGE..end.div_ceil(PAGE) {
                let page = match node.pages.entry(index) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        // The page as it reads now: backing bytes, zeros past the size.
                        let mut page = vec![0; PAGE as usize].into_boxed_slice();
                        if index * PAGE < size {
                            let valid = (size - index * PAGE).min(PAGE) as usize;
                            read_backing(&file, &mut page[..valid], index * PAGE)?;
                        }
                        e.insert(page)
                    }
                };
                let start = (index * PAGE).max(offset);
                let stop = (index * PAGE + PAGE).min(end);
                page[(start - index * PAGE) as usize..(stop - index * PAGE) as usize]
                    .copy_from_slice(&data[(start - offset) as usize..(stop - offset) as usize]);
            }
            node.size = Some(size.max(end));
            node.mtime = Some(SystemTime::now());
            Ok(())
        })();
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        let key = state.node_key(ino, fold);
        state.count_fsync(key);
        if state.ignore_fsync {
            reply.ok();
            return;
        }
        let Some(file) = state.handles.get(&fh.0).map(|h| Arc::clone(&h.file)) else {
            reply.error(Errno::EBADF);
            return;
        };
        match state.sync(ino.0, &file) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.lock();
        state.next_fh += 1;
        let fh = state.next_fh;
        state.dirs.insert(fh, Vec::new());
        match list(&mut state, ino.0, fh) {
            Ok(()) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => {
                state.dirs.remove(&fh);
                reply.error(e);
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.lock();
        if offset == 0 {
            // A rewind lists again.
            if let Err(e) = list(&mut state, ino.0, fh.0) {
                reply.error(e);
                return;
            }
        }
        let Some(entries) = state.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory entries went to the backing directory when made: nothing to write.
        let mut state = self.lock();
        let key = state.node_key(ino, |p| format!("dir:{}", p.display()));
        state.count_fsync(key);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = std::ffi::CString::new(self.lock().root.as_os_str().as_encoded_bytes())
            .expect("a path without NUL");
        // SAFETY: statvfs(3) fills the zeroed struct we own from a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(root.as_ptr(), &mut st) } != 0 {
            reply.error(errno(std::io::Error::last_os_error()));
            return;
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }
}

/// Takes the listing of directory `ino` for handle `fh`.
fn list(state: &mut State, ino: u64, fh: u64) -> Result<(), Errno> {
    let rel = state.path(ino)?;
    let mut names: Vec<(std::ffi::OsString, FileType)> = Vec::new();
    for entry in std::fs::read_dir(state.real(&rel)).map_err(errno)? {
        let entry = entry.map_err(errno)?;
        let kind = match entry.file_type() {
            Ok(t) if t.is_dir() => FileType::Directory,
            Ok(t) if t.is_symlink() => FileType::Symlink,
            _ => FileType::RegularFile,
        };
        names.push((entry.file_name(), kind));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries = vec![
        (ino, FileType::Directory, ".".into()),
        (ino, FileType::Directory, "..".into()),
    ];
    for (name, kind) in names {
        let child = state.ino_for(rel.join(&name));
        entries.push((child, kind, name));
    }
    state.dirs.insert(fh, entries);
    Ok(())
}
