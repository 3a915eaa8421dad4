//! Secrets that come from the environment or from disk: the admin key and
//! the master key that seals every stored token.
//!
//! The master key comes from `THERMOS_MASTER_KEY` (base64), else from the key
//! file, else it is generated once and written to the key file with mode
//! 0600, atomically: two processes starting together agree on one key. Never
//! logs or returns a key in clear (only its id, [`MasterKey::id_hex`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use thermos_core::seal::{KeyError, MasterKey};

use super::Config;

/// Environment variable holding the master key as base64 (32 bytes); it wins
/// over the key file.
pub const MASTER_KEY_ENV: &str = "THERMOS_MASTER_KEY";

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `THERMOS_MASTER_KEY`.
    Env,
    /// An existing key file.
    File(PathBuf),
    /// Generated now and written to this file. The caller should warn loudly:
    /// without a backup of the file the stored tokens cannot be decrypted.
    Generated(PathBuf),
}

/// Why the master key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// `THERMOS_MASTER_KEY` is set but empty.
    #[error("{MASTER_KEY_ENV} is set but empty")]
    EnvEmpty,
    /// `THERMOS_MASTER_KEY` is not a valid key.
    #[error("read master key from {MASTER_KEY_ENV}")]
    Env(#[source] KeyError),
    /// The key file does not hold a valid key.
    #[error("read master key file {}", path.display())]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: KeyError,
    },
    /// The key file could not be read.
    #[error("read master key file {}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A new key file could not be written.
    #[error("create master key file {}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
}

impl Config {
    /// The master key: from `THERMOS_MASTER_KEY`, else from
    /// `security.master_key_file`, else newly generated into that file
    /// (mode 0600). On [`KeySource::Generated`] the caller logs a loud warning
    /// telling the operator to back the file up.
    pub fn load_or_create_master_key(&self) -> Result<(MasterKey, KeySource), MasterKeyError> {
        // A non-UTF-8 value is kept (lossily) so that it fails as invalid
        // rather than being mistaken for "unset".
        let env = std::env::var_os(MASTER_KEY_ENV).map(|v| SecretString::from(v.to_string_lossy().into_owned()));
        self.load_or_create_master_key_with(env)
    }

    /// [`Config::load_or_create_master_key`] with the value of
    /// `THERMOS_MASTER_KEY` given (`None`: unset), for tests.
    pub fn load_or_create_master_key_with(
        &self,
        env_value: Option<SecretString>,
    ) -> Result<(MasterKey, KeySource), MasterKeyError> {
        if let Some(text) = env_value {
            if text.expose_secret().trim().is_empty() {
                return Err(MasterKeyError::EnvEmpty);
            }
            let key = MasterKey::parse_base64(text.expose_secret()).map_err(MasterKeyError::Env)?;
            return Ok((key, KeySource::Env));
        }
        let path = &self.security.master_key_file;
        match read_key_file(path) {
            Ok(key) => Ok((key, KeySource::File(path.clone()))),
            Err(MasterKeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                create_key_file(path)
            }
            Err(e) => Err(e),
        }
    }
}

/// An environment value as a secret; `None` when unset or empty.
pub(super) fn non_empty_secret(value: Option<String>) -> Option<SecretString> {
    value.filter(|v| !v.is_empty()).map(SecretString::from)
}

fn read_key_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
    let text = fs::read_to_string(path)
        .map(SecretString::from)
        .map_err(|source| MasterKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
    warn_if_readable_by_others(path);
    MasterKey::parse_base64(text.expose_secret()).map_err(|source| MasterKeyError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Generates a key and links it into place only if no file is there yet
/// (written to a 0600 temporary file first, so the key file is never seen
/// half-written). If another process won the race, its key is used.
fn create_key_file(path: &Path) -> Result<(MasterKey, KeySource), MasterKeyError> {
    let write_error = |source| MasterKeyError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(write_error)?;
    let (key, text) = MasterKey::generate();
    let mut builder = tempfile::Builder::new();
    builder.prefix(".thermos-key-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let mut file = builder.tempfile_in(dir).map_err(write_error)?;
    file.write_all(text.expose_secret().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.as_file().sync_all())
        .map_err(write_error)?;
    match file.persist_noclobber(path) {
        Ok(_) => Ok((key, KeySource::Generated(path.to_owned()))),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
            Ok((read_key_file(path)?, KeySource::File(path.to_owned())))
        }
        Err(e) => Err(write_error(e.error)),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "the master key file is accessible to other users; restrict it with chmod 600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_admin_key_counts_as_unset() {
        assert!(non_empty_secret(None).is_none());
        assert!(non_empty_secret(Some(String::new())).is_none());
        assert_eq!(non_empty_secret(Some("k".into())).unwrap().expose_secret(), "k");
    }

    fn config_with_key_file(path: &Path) -> Config {
        let mut config = Config::default();
        config.security.master_key_file = path.to_owned();
        config
    }

    #[test]
    fn a_generated_master_key_is_written_0600_and_read_back_the_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("thermos.key");
        let config = config_with_key_file(&path);

        let (first, source) = config.load_or_create_master_key_with(None).unwrap();
        assert_eq!(source, KeySource::Generated(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "mode {mode:o}");
        }
        let (second, source) = config.load_or_create_master_key_with(None).unwrap();
        assert_eq!(source, KeySource::File(path.clone()));
        assert_eq!(first.id_hex(), second.id_hex());
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn processes_racing_to_create_the_master_key_agree_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_key_file(&dir.path().join("thermos.key"));
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| config.load_or_create_master_key_with(None).unwrap().0.id_hex()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }

    #[test]
    fn the_master_key_from_the_environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thermos.key");
        let config = config_with_key_file(&path);
        config.load_or_create_master_key_with(None).unwrap();
        let (expected, text) = MasterKey::generate();

        let (key, source) = config.load_or_create_master_key_with(Some(text)).unwrap();
        assert_eq!(source, KeySource::Env);
        assert_eq!(key.id_hex(), expected.id_hex());
    }

    #[test]
    fn a_bad_master_key_is_a_clear_error() {
        fn chain(e: &dyn std::error::Error) -> String {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thermos.key");
        let config = config_with_key_file(&path);

        let err = config
            .load_or_create_master_key_with(Some(SecretString::from("not base64!")))
            .unwrap_err();
        assert_eq!(
            chain(&err),
            "read master key from THERMOS_MASTER_KEY: master key is not valid base64"
        );
        let err = config
            .load_or_create_master_key_with(Some(SecretString::from("")))
            .unwrap_err();
        assert_eq!(chain(&err), "THERMOS_MASTER_KEY is set but empty");

        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let err = config.load_or_create_master_key_with(None).unwrap_err();
        assert_eq!(
            chain(&err),
            format!(
                "read master key file {}: master key must be 32 bytes, found 5",
                path.display()
            )
        );
    }
}
