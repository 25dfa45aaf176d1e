//! AWS credentials for signed destinations: aws-config's chain (environment, profiles with SSO,
//! `credential_process`, static keys or role chains, web identity, container, instance
//! metadata), or one named `profile`, optionally followed by an STS `AssumeRole`; held in a
//! cache, because aws-config's providers do not cache.
//!
//! Cache invariants: credentials handed out are never expired. Credentials with an expiry are
//! refreshed once less than `min(5 min, half their lifetime)` is left (so a 4-second
//! `credential_process` lease is renewed after 2 s, a 1-hour SSO role after 55 min); the refresh
//! happens on the first signing after that point, so an idle agent wakes nothing. A failed early
//! refresh keeps using the held credentials while they are still valid. One fetch at a time per
//! destination (its signals share one cache). [`CachedCredentials::invalidate`] drops them (the
//! upstream refused them).
//!
//! Nothing is fetched before the first request: [`describe`] (for `check` and messages) reads
//! only the environment and the AWS config files. Secrets are never logged or formatted.

use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::Mutex;

use crate::config::{AwsAccess, AwsCredentials, Destination};
use crate::error::error_chain;

/// Credentials are renewed this long before they expire at most (less for short leases).
const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// A provider that has not answered by then (SSO portal, STS) has failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The STS session name when `session_name` is not set.
pub const DEFAULT_SESSION_NAME: &str = "otlp-spool";

/// Where a destination's credentials come from: the config keys, and its region (for STS).
#[derive(Debug, Clone, Default)]
pub struct CredentialSettings {
    pub region: String,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub session_name: Option<String>,
}

impl CredentialSettings {
    /// The settings of a destination's credential keys, for STS in `region`.
    pub fn new(keys: &AwsCredentials, region: &str) -> CredentialSettings {
        CredentialSettings {
            region: region.to_string(),
            profile: keys.profile.clone(),
            role_arn: keys.role_arn.clone(),
            external_id: keys.external_id.as_ref().map(|s| s.expose().to_string()),
            session_name: keys.session_name.clone(),
        }
    }
}

/// A destination's credentials, fetched on first use and cached (see the module docs).
pub struct CachedCredentials {
    settings: CredentialSettings,
    state: Mutex<State>,
    /// Set by [`CachedCredentials::invalidate`]; read without waiting for a fetch in progress.
    stale: StdMutex<bool>,
}

#[derive(Default)]
struct State {
    /// Built on first use; dropped after a failed fetch, so the next attempt re-reads the AWS
    /// config files (a profile created or logged into meanwhile) instead of repeating a cached
    /// initialization error.
    provider: Option<SharedCredentialsProvider>,
    held: Option<Held>,
}

struct Held {
    credentials: Credentials,
    /// When to fetch new ones; `None` for credentials without an expiry (static keys).
    refresh_at: Option<SystemTime>,
}

impl CachedCredentials {
    pub fn new(settings: CredentialSettings) -> CachedCredentials {
        CachedCredentials {
            settings,
            state: Mutex::new(State::default()),
            stale: StdMutex::new(false),
        }
    }

    /// Live credentials, or why there are none and what to run.
    pub async fn get(&self) -> Result<Credentials, String> {
        let mut state = self.state.lock().await;
        let now = SystemTime::now();
        if std::mem::take(&mut *self.stale.lock().unwrap()) {
            state.held = None;
        }
        if let Some(h) = state.held.as_ref() {
            if h.refresh_at.is_none_or(|at| now < at) {
                return Ok(h.credentials.clone());
            }
        }
        if state.provider.is_none() {
            state.provider = Some(self.build_provider().await);
        }
        let provider = state.provider.clone().expect("just built");
        let fetched =
            match tokio::time::timeout(FETCH_TIMEOUT, provider.provide_credentials()).await {
                Ok(Ok(c)) => match c.expiry() {
                    Some(expiry) if expiry <= now + Duration::from_secs(1) => Err(format!(
                        "the credentials it returned expired at {}",
                        httpdate::fmt_http_date(expiry)
                    )),
                    _ => Ok(c),
                },
                Ok(Err(e)) => Err(error_chain(&e)),
                Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
            };
        match fetched {
            Ok(credentials) => {
                let refresh_at = credentials.expiry().map(|expiry| {
                    let life = expiry.duration_since(now).unwrap_or_default();
                    expiry - REFRESH_AHEAD.min(life / 2)
                });
                tracing::debug!(expires = ?credentials.expiry().map(httpdate::fmt_http_date), "fetched AWS credentials");
                state.held = Some(Held {
                    credentials: credentials.clone(),
                    refresh_at,
                });
                Ok(credentials)
            }
            Err(error) => {
                state.provider = None;
                let still_valid = state.held.as_ref().filter(|h| {
                    h.credentials
                        .expiry()
                        .is_some_and(|e| now + Duration::from_secs(5) < e)
                });
                if let Some(h) = still_valid {
                    tracing::warn!(error = %error, "refreshing AWS credentials ahead of expiry failed; using the current ones while they last");
                    return Ok(h.credentials.clone());
                }
                state.held = None;
                Err(self.explain(&error))
            }
        }
    }

    /// Forgets the held credentials (the upstream refused them): the next signing fetches anew.
    pub fn invalidate(&self) {
        *self.stale.lock().unwrap() = true;
    }

    /// What to tell the user when the upstream refuses the credentials (401/403).
    pub fn refused_hint(&self) -> String {
        let source = describe_settings(&self.settings);
        format!("credentials from {}: {}", source.text, source.fix)
    }

    fn explain(&self, error: &str) -> String {
        let source = describe_settings(&self.settings);
        format!(
            "no usable AWS credentials from {}: {error}; {}",
            source.text, source.fix
        )
    }

    async fn build_provider(&self) -> SharedCredentialsProvider {
        let s = &self.settings;
        let http = https_client();
        let region = Region::new(s.region.clone());
        let provider_config = ProviderConfig::default()
            .with_http_client(http.clone())
            .with_region(Some(region.clone()))
            .with_behavior_version(Some(BehaviorVersion::latest()));
        let base = match &s.profile {
            // A named profile is used as is: the environment's keys do not override it.
            Some(profile) => SharedCredentialsProvider::new(
                ProfileFileCredentialsProvider::builder()
                    .profile_name(profile)
                    .configure(&provider_config)
                    .build(),
            ),
            None => SharedCredentialsProvider::new(
                DefaultCredentialsChain::builder()
                    .region(region.clone())
                    .configure(provider_config)
                    .build()
                    .await,
            ),
        };
        let Some(role_arn) = &s.role_arn else {
            return base;
        };
        // STS through the SDK config, so AWS_ENDPOINT_URL_STS and the STS region settings apply.
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region)
            .credentials_provider(base)
            .load()
            .await;
        let mut builder = AssumeRoleProvider::builder(role_arn)
            .configure(&sdk)
            .session_name(s.session_name.as_deref().unwrap_or(DEFAULT_SESSION_NAME));
        if let Some(id) = &s.external_id {
            builder = builder.external_id(id);
        }
        SharedCredentialsProvider::new(builder.build().await)
    }
}

/// The HTTP client aws-config uses for SSO and STS: rustls on ring (no aws-lc build).
fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Which credential source a destination would use, and what to run when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDescription {
    /// Such as `profile "dev" (AWS SSO, in ~/.aws/config), then role arn:… assumed via STS`.
    pub text: String,
    /// Such as `run \`aws sso login --profile dev\``.
    pub fix: String,
}

/// How a destination authenticates, for `check`: `None` if it sends no AWS credentials.
/// Reads the environment and the AWS config files only.
pub fn describe(d: &Destination) -> Option<SourceDescription> {
    Some(match d.aws_access()? {
        AwsAccess::SigV4 {
            credentials,
            region,
        } => describe_settings(&CredentialSettings::new(credentials, region)),
        AwsAccess::LogsApiKey => SourceDescription {
            text: "a CloudWatch Logs API key (bearer_token)".into(),
            fix: "check the key: create one in the CloudWatch console (Settings, API keys)".into(),
        },
    })
}

/// What kind of profile a name is, from the AWS config and credentials files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileKind {
    Sso,
    Process,
    Role,
    WebIdentity,
    Static,
    /// The section exists but has no credential keys (region only, say).
    Empty,
}

fn aws_file(var: &str, default: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(path) => Some(PathBuf::from(path)),
        None => dirs::home_dir().map(|h| h.join(".aws").join(default)),
    }
}

/// The keys of section `[wanted]` of an INI file, lowercased.
fn ini_section_keys(path: &std::path::Path, wanted: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut keys = None::<Vec<String>>;
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.split_whitespace().collect::<Vec<_>>().join(" ");
            inside = section == wanted;
            if inside {
                keys.get_or_insert_with(Vec::new);
            }
        } else if inside {
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim().to_ascii_lowercase();
                if !key.is_empty() && !key.starts_with(['#', ';']) {
                    keys.get_or_insert_with(Vec::new).push(key);
                }
            }
        }
    }
    keys
}

/// The kind of profile `name` and the file that defines it, or `None` if neither file has it.
fn profile_kind(name: &str) -> Option<(ProfileKind, PathBuf)> {
    let config = aws_file("AWS_CONFIG_FILE", "config");
    let credentials = aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_section = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    let mut found: Vec<(Vec<String>, PathBuf)> = Vec::new();
    if let Some(path) = &credentials {
        if let Some(keys) = ini_section_keys(path, name) {
            found.push((keys, path.clone()));
        }
    }
    if let Some(path) = &config {
        if let Some(keys) = ini_section_keys(path, &config_section) {
            found.push((keys, path.clone()));
        }
    }
    let has = |k: &str| found.iter().any(|(keys, _)| keys.iter().any(|x| x == k));
    let kind = if has("aws_access_key_id") {
        ProfileKind::Static
    } else if has("sso_session") || has("sso_start_url") {
        ProfileKind::Sso
    } else if has("credential_process") {
        ProfileKind::Process
    } else if has("web_identity_token_file") {
        ProfileKind::WebIdentity
    } else if has("role_arn") {
        ProfileKind::Role
    } else {
        ProfileKind::Empty
    };
    let file = found.into_iter().next()?.1;
    Some((kind, file))
}

fn home_relative(path: &std::path::Path) -> String {
    match dirs::home_dir().and_then(|h| path.strip_prefix(h).ok().map(|p| p.to_path_buf())) {
        Some(rest) => format!("~/{}", rest.display()),
        None => path.display().to_string(),
    }
}

fn describe_profile(name: &str, explicit: bool) -> SourceDescription {
    let flag = if name == "default" {
        String::new()
    } else {
        format!(" --profile {name}")
    };
    let origin = if explicit {
        ""
    } else {
        " (AWS_PROFILE or default)"
    };
    match profile_kind(name) {
        None => SourceDescription {
            text: format!(
                "profile {name:?}{origin}, which is not in {} or {}",
                aws_file("AWS_CONFIG_FILE", "config")
                    .map(|p| home_relative(&p))
                    .unwrap_or_default(),
                aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
                    .map(|p| home_relative(&p))
                    .unwrap_or_default()
            ),
            fix: format!("create it: run `aws configure sso{flag}` (or `aws configure{flag}`)"),
        },
        Some((kind, file)) => {
            let (what, fix) = match kind {
                ProfileKind::Sso => ("AWS SSO", format!("run `aws sso login{flag}`")),
                ProfileKind::Process => (
                    "credential_process",
                    format!(
                        "run the profile's credential_process by hand to see why it fails \
                         (`aws configure get credential_process{flag}`)"
                    ),
                ),
                ProfileKind::Role => (
                    "role_arn with a source profile",
                    format!(
                        "check the source profile's credentials and that it may assume the role \
                         (`aws sts get-caller-identity{flag}`); for an SSO source run `aws sso login`"
                    ),
                ),
                ProfileKind::WebIdentity => (
                    "web identity token",
                    "check the web_identity_token_file and role_arn of the profile".to_string(),
                ),
                ProfileKind::Static => (
                    "access keys",
                    format!(
                        "check the keys: `aws sts get-caller-identity{flag}`; replace rotated keys \
                         with `aws configure{flag}`"
                    ),
                ),
                ProfileKind::Empty => (
                    "no credential keys",
                    format!("add credentials to it: run `aws configure sso{flag}`"),
                ),
            };
            SourceDescription {
                text: format!(
                    "profile {name:?}{origin} ({what}, in {})",
                    home_relative(&file)
                ),
                fix,
            }
        }
    }
}

fn env_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// The source the settings resolve to, without contacting anything.
pub fn describe_settings(s: &CredentialSettings) -> SourceDescription {
    let mut source = match &s.profile {
        Some(profile) => describe_profile(profile, true),
        None if env_set("AWS_ACCESS_KEY_ID") && env_set("AWS_SECRET_ACCESS_KEY") => {
            SourceDescription {
                text: format!(
                    "environment variables AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY{}",
                    if env_set("AWS_SESSION_TOKEN") {
                        ", AWS_SESSION_TOKEN"
                    } else {
                        ""
                    }
                ),
                fix: "export fresh keys in the agent's environment (a session token expires; \
                      prefer a profile = \"…\" with SSO, which the agent refreshes)"
                    .into(),
            }
        }
        None => {
            let profile = std::env::var("AWS_PROFILE")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "default".into());
            if profile_kind(&profile).is_some() {
                describe_profile(&profile, false)
            } else if env_set("AWS_WEB_IDENTITY_TOKEN_FILE") {
                SourceDescription {
                    text: "web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)".into(),
                    fix: "check AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN".into(),
                }
            } else if env_set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                || env_set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            {
                SourceDescription {
                    text: "container credentials (AWS_CONTAINER_CREDENTIALS_*)".into(),
                    fix: "check the task or pod role".into(),
                }
            } else {
                let imds = if std::env::var("AWS_EC2_METADATA_DISABLED")
                    .is_ok_and(|v| v.eq_ignore_ascii_case("true"))
                {
                    ""
                } else {
                    ", then EC2 instance metadata (on EC2 only)"
                };
                SourceDescription {
                    text: format!(
                        "aws-config's default chain, which finds nothing here (no \
                         AWS_ACCESS_KEY_ID, no profile {profile:?} in ~/.aws/config or \
                         ~/.aws/credentials, no web identity or container credentials{imds})"
                    ),
                    fix: "set profile = \"…\" in the destination (or AWS_PROFILE in the agent's \
                          environment) to an AWS profile, and run `aws configure sso` to create \
                          one"
                    .into(),
                }
            }
        }
    };
    if let Some(role) = &s.role_arn {
        source.text.push_str(&format!(
            ", then role {role} assumed via STS (session name {:?}{})",
            s.session_name.as_deref().unwrap_or(DEFAULT_SESSION_NAME),
            if s.external_id.is_some() {
                ", with external_id"
            } else {
                ""
            }
        ));
        source.fix.push_str(&format!(
            "; and check that these credentials may assume {role} (`aws sts assume-role \
             --role-arn {role} --role-session-name test`)"
        ));
    }
    source
}
