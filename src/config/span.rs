//! Where a key is written in a TOML document: the line and column of an offset, the dotted key
//! at an offset, the span of a dotted key, and a destination name used twice. Reads the parsed
//! document only.

/// 1-based line and column (counted in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

pub(super) type DeTable<'i> = toml::de::DeTable<'i>;

pub(super) type DeSpanned<'i> = toml::Spanned<toml::de::DeValue<'i>>;

pub(super) fn entry<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a DeSpanned<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// The dotted path of the deepest key whose name or value covers `offset` (array elements add
/// no segment: `destination.endpoint`).
pub(super) fn key_path_at(doc: &DeTable<'_>, offset: usize) -> Option<String> {
    fn covers(span: std::ops::Range<usize>, offset: usize) -> bool {
        span.contains(&offset) || span.start == offset
    }
    fn in_table(t: &DeTable<'_>, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
        for (k, v) in t.iter() {
            path.push(k.get_ref().to_string());
            if (covers(k.span(), offset) || covers(v.span(), offset)) && path.len() > best.len() {
                *best = path.clone();
            }
            in_value(v, offset, path, best);
            path.pop();
        }
    }
    fn in_value(v: &DeSpanned<'_>, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
        match v.get_ref() {
            toml::de::DeValue::Table(t) => in_table(t, offset, path, best),
            toml::de::DeValue::Array(a) => {
                for e in a.iter() {
                    if covers(e.span(), offset) && path.len() > best.len() {
                        *best = path.clone();
                    }
                    in_value(e, offset, path, best);
                }
            }
            _ => {}
        }
    }
    let mut best = Vec::new();
    in_table(doc, offset, &mut Vec::new(), &mut best);
    (!best.is_empty()).then(|| best.join("."))
}

/// Where the value of a dotted key (`server.listen`) is written, if it is.
/// A numeric segment indexes an array (`destination.1.region`); when such a key is not written
/// (a missing required key), the span of the table that should hold it is returned.
pub(super) fn span_of_key(doc: &DeTable<'_>, key: &str) -> Option<std::ops::Range<usize>> {
    let mut parts = key.split('.');
    let mut value = entry(doc, parts.next()?)?;
    let mut indexed = false;
    for part in parts {
        let next = match (part.parse::<usize>(), value.get_ref()) {
            (Ok(i), toml::de::DeValue::Array(a)) => {
                indexed = true;
                a.get(i)
            }
            _ => value.get_ref().as_table().and_then(|t| entry(t, part)),
        };
        match next {
            Some(v) => value = v,
            None if indexed => break,
            None => return None,
        }
    }
    Some(value.span())
}

/// The first destination name used twice: the name, and where its first and second uses are.
pub(super) fn duplicate_destination(doc: &DeTable<'_>) -> Option<(String, usize, usize)> {
    let destinations = entry(doc, "destination")?.get_ref().as_array()?;
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for d in destinations.iter() {
        let Some(name) = d.get_ref().as_table().and_then(|t| entry(t, "name")) else {
            continue;
        };
        let Some(text) = name.get_ref().as_str() else {
            continue;
        };
        if let Some(&(_, first)) = seen.iter().find(|(n, _)| *n == text) {
            return Some((text.to_string(), first, name.span().start));
        }
        seen.push((text, name.span().start));
    }
    None
}
