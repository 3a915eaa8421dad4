//! Checks of what Thermos runs on: the database, the master key, the admin
//! key and the providers' token endpoints.

use std::path::PathBuf;
use std::time::Duration;

use thermos_core::seal::{Field, MasterKey};
use thermos_store::{ConnectionFilter, Store};

use super::{Check, error_chain};
use crate::config::{Config, KeySource, MASTER_KEY_ENV};

/// How long a token endpoint has to answer.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);

/// How many stored access tokens the master key must open.
const KEY_SAMPLE: u32 = 20;

pub(super) async fn database(config: &Config, store: &dyn Store) -> Check {
    match store.ping().await {
        Ok(()) => Check::ok(
            "database",
            format!("{} reachable, migrations applied", config.database_url_redacted()),
        ),
        Err(e) => Check::fail(
            "database",
            format!(
                "{} does not answer: {}",
                config.database_url_redacted(),
                error_chain(&e)
            ),
            "check [database] url and the disk holding it, then `thermos migrate`",
        ),
    }
}

/// The SQLite file's directory must be writable (WAL and journal files live
/// next to the database).
pub(super) fn database_directory(config: &Config) -> Option<Check> {
    let file = sqlite_file(&config.database_url)?;
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = "database directory";
    Some(match tempfile::tempfile_in(&dir) {
        Ok(_) => Check::ok(name, format!("{} is writable", dir.display())),
        Err(e) => Check::fail(
            name,
            format!("cannot write in {}: {e}", dir.display()),
            "give the thermos user write access to the directory, or move [database] url",
        ),
    })
}

/// The file of a `sqlite:` URL (`sqlite://path?opts`, `sqlite:path`).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// The master key is there (never generated here) and opens a sample of the
/// stored access tokens.
pub(super) async fn master_key(config: &Config, store: Option<&dyn Store>) -> Check {
    let name = "master key";
    let file = &config.security.master_key_file;
    if std::env::var_os(MASTER_KEY_ENV).is_none() && !file.exists() {
        return Check::fail(
            name,
            format!(
                "no master key: {MASTER_KEY_ENV} is unset and {} does not exist",
                file.display()
            ),
            format!(
                "set {MASTER_KEY_ENV} or restore security.master_key_file from backup \
                 (`thermos serve` generates one only for a new installation)"
            ),
        );
    }
    let (key, source) = match config.load_or_create_master_key() {
        Ok(found) => found,
        Err(e) => {
            return Check::fail(
                name,
                error_chain(&e),
                format!("fix {MASTER_KEY_ENV} or security.master_key_file (32 bytes, base64)"),
            );
        }
    };
    let from = match &source {
        KeySource::Env => MASTER_KEY_ENV.to_owned(),
        KeySource::File(path) | KeySource::Generated(path) => path.display().to_string(),
    };
    let Some(store) = store else {
        return Check::ok(
            name,
            format!("key {} from {from} (stored tokens not checked)", key.id_hex()),
        );
    };
    match open_sample(&key, store).await {
        Ok((0, 0)) => Check::ok(name, format!("key {} from {from}; no stored tokens yet", key.id_hex())),
        Ok((opened, 0)) => Check::ok(
            name,
            format!("key {} from {from} opens {opened} sampled token(s)", key.id_hex()),
        ),
        Ok((opened, failed)) => Check::fail(
            name,
            format!(
                "key {} from {from} cannot open {failed} of {} sampled token(s)",
                key.id_hex(),
                opened + failed
            ),
            format!("use the master key the tokens were sealed with ({MASTER_KEY_ENV} or security.master_key_file)"),
        ),
        Err(e) => Check::warn(
            name,
            format!(
                "key {} from {from}; cannot read tokens: {}",
                key.id_hex(),
                error_chain(&e)
            ),
            "see the database check",
        ),
    }
}

/// Which keys the stored secrets are sealed with: every key id must be
/// configured (else those secrets cannot be opened), and values still under
/// an older key mean a rotation is unfinished. `None` without a store or a
/// loadable key (the master key check says why).
pub(super) async fn sealed_keys(config: &Config, store: Option<&dyn Store>) -> Option<Check> {
    let name = "sealed secrets";
    let store = store?;
    // Never generate a key here (the master key check reports it missing).
    if std::env::var_os(MASTER_KEY_ENV).is_none() && !config.security.master_key_file.exists() {
        return None;
    }
    let (key, _) = config.load_or_create_master_key().ok()?;
    let counts = match store.count_sealed_by_key_id().await {
        Ok(counts) => counts,
        Err(e) => {
            return Some(Check::warn(
                name,
                format!("cannot count them: {}", error_chain(&e)),
                "see the database check",
            ));
        }
    };
    let configured = key.key_ids();
    let primary = key.primary_id();
    let (mut under_primary, mut under_old, mut unknown, mut malformed) = (0u64, Vec::new(), Vec::new(), 0u64);
    for entry in counts {
        match entry.key_id {
            Some(id) if id == primary => under_primary += entry.count,
            Some(id) if configured.contains(&id) => under_old.push(format!("{} under {id}", entry.count)),
            Some(id) => unknown.push(format!("{} under {id}", entry.count)),
            None => malformed += entry.count,
        }
    }
    Some(if !unknown.is_empty() || malformed > 0 {
        let mut what = unknown;
        if malformed > 0 {
            what.push(format!("{malformed} too short to name a key"));
        }
        Check::fail(
            name,
            format!("stored secrets no configured key opens: {}", what.join(", ")),
            "add the key they were sealed with to the key file (after the primary) or THERMOS_MASTER_KEY;              `thermos keys master-status` lists them",
        )
    } else if !under_old.is_empty() {
        Check::warn(
            name,
            format!(
                "{under_primary} under the primary key {primary}; still under older keys: {}",
                under_old.join(", ")
            ),
            "finish the rotation: `thermos keys reencrypt`, then `thermos keys retire-master ID`",
        )
    } else {
        Check::ok(name, format!("all {under_primary} under the primary key {primary}"))
    })
}

/// (opened, failed) over the first connections' access tokens.
async fn open_sample(key: &MasterKey, store: &dyn Store) -> thermos_store::StoreResult<(usize, usize)> {
    let records = store
        .list_connections(&ConnectionFilter::default(), None, KEY_SAMPLE)
        .await?;
    let opened = records
        .iter()
        .filter(|r| key.open(&r.id, Field::AccessToken, &r.access_token).is_ok())
        .count();
    Ok((opened, records.len() - opened))
}

pub(super) fn admin_key(config: &Config) -> Check {
    let variable = &config.security.admin_key_env;
    if config.admin_key().is_some() {
        Check::ok("admin key", format!("{variable} is set"))
    } else {
        Check::warn(
            "admin key",
            format!("{variable} is not set: only project keys can use the API"),
            format!("set {variable} (security.admin_key_env) to a long random value"),
        )
    }
}

/// Each configured provider's token endpoint answers over TCP/TLS. Any HTTP
/// status counts: a token endpoint rightly refuses an empty request.
pub(super) async fn providers(config: &Config) -> Vec<Check> {
    let client = match reqwest::Client::builder()
        .timeout(PROVIDER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            return vec![Check::fail(
                "providers",
                format!("cannot build an HTTP client: {}", error_chain(&e)),
                "check the system's TLS set-up",
            )];
        }
    };
    if config.providers.is_empty() {
        return vec![Check::warn(
            "providers",
            "no provider configured: nothing can be refreshed",
            "add a [[provider]] section (`thermos config example`)",
        )];
    }
    let probes = config.providers.iter().map(|provider| {
        let client = client.clone();
        async move {
            let name = format!("provider {}", provider.slug);
            let url = &provider.token_url;
            match client.post(url.clone()).send().await {
                Ok(response) => Check::ok(name, format!("{url} answers (HTTP {})", response.status().as_u16())),
                Err(e) => Check::fail(
                    name,
                    format!("{url} unreachable: {}", error_chain(&e)),
                    format!(
                        "check provider.token_url of {} (DNS, firewall, proxy, TLS certificate)",
                        provider.slug
                    ),
                ),
            }
        }
    });
    futures::future::join_all(probes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_of_a_sqlite_url_is_found() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/t.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/t.db"))
        );
        assert_eq!(sqlite_file("sqlite:t.db"), Some(PathBuf::from("t.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://db"), None);
    }
}
