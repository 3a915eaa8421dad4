//! Master key rotation: `thermos keys rotate-master`, `reencrypt`,
//! `master-status`, `promote-master`, `retire-master`.
//!
//! The key file holds the ring, the primary first (`config::key`); these
//! commands rewrite it atomically and re-encrypt the stored secrets
//! (connection tokens, custom apps' client secrets, webhook signing secrets)
//! under the primary in batches. Nothing is remembered between runs: the
//! work left is "every sealed value whose key id is not the primary's", so an
//! interrupted re-encryption is resumed by running `thermos keys reencrypt`.
//!
//! Re-encryption compares and swaps on the stored bytes and never bumps a
//! row's version ([`thermos_store::reseal`]): a refresh committing at the
//! same moment wins, and its value is picked up by the next pass. Running
//! servers reload the key file every [`KEY_RELOAD_INTERVAL`], and may seal
//! with the previous primary until then, so passes repeat until one that
//! started at least that long after the command began finds nothing.
//!
//! Prints key ids, never a key. See docs/security.md for the rollouts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use thermos_core::seal::{Field, KeyId, MasterKey, SealError};
use thermos_store::Store;
use thermos_store::reseal::{Reseal, SealedColumn, SealedOwner, SealedValue};

use crate::app;
use crate::config::{
    Config, KEY_RELOAD_INTERVAL, KeyEntry, KeySource, MASTER_KEY_ENV, read_key_entries, write_key_file,
};

/// Rows per re-encryption batch unless `--batch` says otherwise.
pub const DEFAULT_BATCH: u32 = 500;

/// Extra wait beyond the servers' reload interval before the final pass.
const SETTLE_MARGIN: Duration = Duration::from_secs(2);

/// The master key commands (flattened into `thermos keys`).
#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// Generate a master key, make it primary and re-encrypt under it.
    ///
    /// The new key goes first in the key file (the old keys stay readable),
    /// then every stored secret is re-encrypted under it. Prints the new
    /// key's id, never the key.
    RotateMaster(RotateArgs),
    /// Re-encrypt every stored secret not under the primary master key.
    ///
    /// Resumes an interrupted rotation; safe to run at any time.
    Reencrypt(ReencryptArgs),
    /// Master key ids (primary first) and the stored secrets each seals.
    MasterStatus,
    /// Make a master key in the key file the primary.
    ///
    /// E.g. one added with `rotate-master --stage`; then run `thermos keys
    /// reencrypt`.
    PromoteMaster {
        /// The key's id (16 hex digits, as `master-status` shows).
        key_id: String,
    },
    /// Remove a master key from the key file.
    ///
    /// Refused while any stored secret is sealed under it, and for the
    /// primary.
    RetireMaster {
        /// The key's id (16 hex digits, as `master-status` shows).
        key_id: String,
    },
}

/// `thermos keys rotate-master`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Add the new key second (readable, not primary) and stop: for several
    /// instances with key files of their own. Stage it on every instance,
    /// then `promote-master` it everywhere, then `reencrypt`.
    #[arg(long)]
    stage: bool,
    #[command(flatten)]
    reencrypt: ReencryptArgs,
}

/// How re-encryption proceeds.
#[derive(Debug, Args)]
pub struct ReencryptArgs {
    /// Rows per batch (each batch is one transaction).
    #[arg(long, default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Stop after this many batches (the rest is left for a later
    /// `thermos keys reencrypt`).
    #[arg(long)]
    max_batches: Option<u64>,
    /// How long running servers may take to pick up a changed key file; the
    /// last pass starts at least this long after the command began.
    #[arg(long, value_parser = super::parse_duration, default_value = "7s", hide = true)]
    settle: Duration,
}

pub async fn run(config: &Config, command: MasterKeyCommand) -> anyhow::Result<()> {
    match command {
        MasterKeyCommand::RotateMaster(args) => rotate(config, args).await,
        MasterKeyCommand::Reencrypt(args) => {
            let (key, _) = load(config)?;
            let store = app::open_store(config).await?;
            reencrypt_reporting(store.as_ref(), &key, &args).await
        }
        MasterKeyCommand::MasterStatus => status(config).await,
        MasterKeyCommand::PromoteMaster { key_id } => promote(config, &parse_id(&key_id)?),
        MasterKeyCommand::RetireMaster { key_id } => retire(config, &parse_id(&key_id)?).await,
    }
}

fn parse_id(raw: &str) -> anyhow::Result<KeyId> {
    KeyId::parse_hex(raw).with_context(|| format!("KEY_ID {raw:?}"))
}

/// The ring as configured now (no key is created).
fn load(config: &Config) -> anyhow::Result<(MasterKey, KeySource)> {
    let file = &config.security.master_key_file;
    if std::env::var_os(MASTER_KEY_ENV).is_none() && !file.exists() {
        bail!(
            "no master key: {MASTER_KEY_ENV} is unset and {} does not exist (restore it from backup)",
            file.display()
        );
    }
    Ok(config.load_or_create_master_key()?)
}

/// The key file's entries, refusing when the keys come from the
/// environment (which no command can rewrite).
fn file_entries(config: &Config, what: &str) -> anyhow::Result<Vec<KeyEntry>> {
    if std::env::var_os(MASTER_KEY_ENV).is_some() {
        bail!(
            "the master keys come from {MASTER_KEY_ENV}, which this command cannot change, so it cannot {what}. \
             Roll out by hand (docs/security.md, \"Master key rotation\"): add a new key second \
             ({MASTER_KEY_ENV}=OLD,NEW; generate one with `openssl rand -base64 32`) and restart every instance; \
             move it first (NEW,OLD) and restart every instance; run `thermos keys reencrypt`; \
             then remove the old key (NEW) and restart"
        );
    }
    let path = &config.security.master_key_file;
    read_key_entries(path).with_context(|| format!("read the key file {}", path.display()))
}

async fn rotate(config: &Config, args: RotateArgs) -> anyhow::Result<()> {
    let path = config.security.master_key_file.clone();
    let mut entries = file_entries(config, "rotate the master key")?;
    // Fail before touching the key file if the database cannot be opened.
    let store = if args.stage {
        None
    } else {
        Some(app::open_store(config).await?)
    };
    let new = KeyEntry::generate();
    let new_id = new.id;
    let previous = entries[0].id;
    if args.stage {
        entries.insert(1, new);
    } else {
        entries.insert(0, new);
    }
    write_key_file(&path, &entries)?;
    println!("{new_id}");
    if args.stage {
        eprintln!(
            "Staged master key {new_id} in {} (second: it opens, {previous} still seals). \
             Back the key file up now. Once every instance has it, run `thermos keys promote-master {new_id}` \
             on each, then `thermos keys reencrypt` once.",
            path.display()
        );
        return Ok(());
    }
    eprintln!(
        "Master key {new_id} is now primary in {}; the previous keys stay readable. Back the key file up now: \
         secrets re-encrypted from here on open only with the new key. Running servers pick it up within {}s.",
        path.display(),
        KEY_RELOAD_INTERVAL.as_secs()
    );
    let key = MasterKey::parse_list(
        &entries
            .iter()
            .map(|e| secrecy::ExposeSecret::expose_secret(&e.text).to_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .context("read back the new key ring")?;
    let store = store.expect("opened unless staging");
    reencrypt_reporting(store.as_ref(), &key, &args.reencrypt).await
}

/// Runs [`reencrypt`] reporting progress on stderr; fails when values could
/// not be opened.
async fn reencrypt_reporting(store: &dyn Store, key: &MasterKey, args: &ReencryptArgs) -> anyhow::Result<()> {
    let options = ReencryptOptions {
        batch: args.batch,
        max_batches: args.max_batches,
        settle: args.settle + SETTLE_MARGIN,
    };
    let summary = reencrypt(store, key, &options, &mut |p| {
        eprintln!(
            "re-encrypted {} of {} ({}%)",
            thousands(p.done),
            thousands(p.total),
            (p.done * 100).checked_div(p.total).map_or(100, |pct| pct.min(100))
        );
    })
    .await?;
    if summary.stopped {
        eprintln!(
            "stopped after {} batches ({} re-encrypted); run `thermos keys reencrypt` to continue",
            thousands(summary.batches),
            thousands(summary.re_encrypted)
        );
    } else {
        eprintln!(
            "re-encryption finished: {} re-encrypted; every stored secret that opens is sealed under {}",
            thousands(summary.re_encrypted),
            key.primary_id()
        );
    }
    if !summary.unopened.is_empty() {
        let parts: Vec<String> = summary.unopened.iter().map(|(why, n)| format!("{n} {why}")).collect();
        bail!(
            "{} stored secrets could not be opened and were left as they are: {}",
            summary.unopened.values().sum::<u64>(),
            parts.join("; ")
        );
    }
    Ok(())
}

/// How [`reencrypt`] proceeds.
#[derive(Debug, Clone)]
pub struct ReencryptOptions {
    /// Rows per page (and batch).
    pub batch: u32,
    /// Stop after this many batches (`None`: until done).
    pub max_batches: Option<u64>,
    /// The last pass starts at least this long after the call began.
    pub settle: Duration,
}

/// Where a re-encryption stands (after each batch).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Values re-encrypted so far.
    pub done: u64,
    /// Values not under the primary key when the current pass began, plus
    /// those re-encrypted in earlier passes.
    pub total: u64,
}

/// What [`reencrypt`] did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Values re-encrypted.
    pub re_encrypted: u64,
    /// Batches written.
    pub batches: u64,
    /// Stopped by `max_batches` before finishing.
    pub stopped: bool,
    /// Values that could not be opened, by reason (key ids, never keys).
    pub unopened: BTreeMap<String, u64>,
}

/// Re-encrypts, in batches, every stored sealed value whose key id is not
/// `key`'s primary, until a pass that began at least `settle` after the call
/// finds none that opens (values that cannot be opened are counted in
/// [`Summary::unopened`] and left alone).
pub async fn reencrypt(
    store: &dyn Store,
    key: &MasterKey,
    options: &ReencryptOptions,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Summary> {
    let primary = key.primary_id();
    let settled_at = Instant::now() + options.settle;
    let mut summary = Summary::default();
    loop {
        let pass_started = Instant::now();
        let left: u64 = store
            .count_sealed_by_key_id()
            .await
            .context("count stored secrets by key id")?
            .iter()
            .filter(|c| c.key_id != Some(primary))
            .map(|c| c.count)
            .sum();
        let total = summary.re_encrypted + left;
        let mut unopened = BTreeMap::new();
        let mut attempted = 0u64;
        let mut after: Option<SealedOwner> = None;
        loop {
            if options.max_batches.is_some_and(|max| summary.batches >= max) {
                summary.stopped = true;
                summary.unopened = unopened;
                return Ok(summary);
            }
            let page = store
                .sealed_values_page(after.as_ref(), options.batch, Some(primary))
                .await
                .context("read stored secrets")?;
            let Some(last) = page.last() else { break };
            after = Some(last.owner.clone());
            let mut batch = Vec::with_capacity(page.len());
            for value in page {
                let (owner, field) = binding(&value);
                let resealed = key
                    .reseal_for(&owner, field, &value.sealed)
                    .or_else(|e| match (field, &e) {
                        // A JWT-bearer connection's private key is kept in the refresh token's column.
                        (Field::RefreshToken, SealError::Tampered) => {
                            key.reseal_for(&owner, Field::PrivateKey, &value.sealed).map_err(|_| e)
                        }
                        _ => Err(e),
                    });
                match resealed {
                    Ok(new) => batch.push(Reseal {
                        owner: value.owner,
                        column: value.column,
                        old: value.sealed,
                        new,
                    }),
                    Err(e) => *unopened.entry(unopened_reason(&e)).or_default() += 1,
                }
            }
            if batch.is_empty() {
                continue;
            }
            attempted += batch.len() as u64;
            summary.re_encrypted += store
                .replace_sealed(batch)
                .await
                .context("write re-encrypted secrets")?;
            summary.batches += 1;
            progress(Progress {
                done: summary.re_encrypted,
                total: total.max(summary.re_encrypted),
            });
        }
        summary.unopened = unopened;
        if attempted == 0 {
            if pass_started >= settled_at {
                return Ok(summary);
            }
            tokio::time::sleep(settled_at.saturating_duration_since(Instant::now())).await;
        }
    }
}

/// The associated data a stored value was sealed with: its owner and field.
fn binding(value: &SealedValue) -> (String, Field) {
    match &value.owner {
        SealedOwner::Connection(id) => (
            id.to_string(),
            if value.column == SealedColumn::RefreshToken {
                Field::RefreshToken
            } else {
                Field::AccessToken
            },
        ),
        SealedOwner::CustomApp { project, provider } => {
            (crate::api::apps::owner(project, provider), Field::ClientSecret)
        }
        SealedOwner::Webhook(id) => (crate::outbox::dispatch::secret_owner(id), Field::ClientSecret),
    }
}

fn unopened_reason(error: &SealError) -> String {
    match error {
        SealError::UnknownKey { key_id } => format!("under key {key_id}, which is not configured"),
        SealError::Tampered => "failed authentication (altered, or moved from another row)".to_owned(),
        SealError::Malformed => "malformed".to_owned(),
    }
}

async fn status(config: &Config) -> anyhow::Result<()> {
    let (key, source) = load(config)?;
    let store = app::open_store(config).await?;
    let counts = store
        .count_sealed_by_key_id()
        .await
        .context("count stored secrets by key id")?;
    let configured = key.key_ids();
    println!(
        "master keys from {}",
        match &source {
            KeySource::Env => MASTER_KEY_ENV.to_owned(),
            KeySource::File(path) | KeySource::Generated(path) => path.display().to_string(),
        }
    );
    println!("{:<18}  {:<16}  {:>14}", "KEY ID", "ROLE", "SEALED VALUES");
    let count_of = |id: KeyId| counts.iter().find(|c| c.key_id == Some(id)).map_or(0, |c| c.count);
    for (i, id) in configured.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "readable" };
        println!("{:<18}  {role:<16}  {:>14}", id.to_string(), thousands(count_of(*id)));
    }
    for count in counts
        .iter()
        .filter(|c| c.key_id.is_none_or(|id| !configured.contains(&id)))
    {
        let (id, role) = match count.key_id {
            Some(id) => (id.to_string(), "NOT CONFIGURED"),
            None => ("-".to_owned(), "malformed"),
        };
        println!("{id:<18}  {role:<16}  {:>14}", thousands(count.count));
    }
    let left: u64 = counts
        .iter()
        .filter(|c| c.key_id != Some(key.primary_id()))
        .map(|c| c.count)
        .sum();
    if left > 0 {
        eprintln!(
            "{} stored secrets are not under the primary key; `thermos keys reencrypt` moves them",
            thousands(left)
        );
    }
    Ok(())
}

fn promote(config: &Config, id: &KeyId) -> anyhow::Result<()> {
    let path = &config.security.master_key_file;
    let mut entries = file_entries(config, "promote a master key")?;
    let Some(position) = entries.iter().position(|e| e.id == *id) else {
        bail!("master key {id} is not in {}", path.display());
    };
    if position == 0 {
        eprintln!("master key {id} is already the primary");
        return Ok(());
    }
    let entry = entries.remove(position);
    entries.insert(0, entry);
    write_key_file(path, &entries)?;
    eprintln!(
        "Master key {id} is now primary in {}; running servers pick it up within {}s. \
         Once every instance has it, run `thermos keys reencrypt`.",
        path.display(),
        KEY_RELOAD_INTERVAL.as_secs()
    );
    Ok(())
}

async fn retire(config: &Config, id: &KeyId) -> anyhow::Result<()> {
    let store = app::open_store(config).await?;
    let in_use = store
        .count_sealed_by_key_id()
        .await
        .context("count stored secrets by key id")?
        .iter()
        .find(|c| c.key_id == Some(*id))
        .map_or(0, |c| c.count);
    if std::env::var_os(MASTER_KEY_ENV).is_some() {
        let (key, _) = load(config)?;
        if key.primary_id() == *id {
            bail!("master key {id} is the primary: promote another key first");
        }
        if in_use > 0 {
            bail!("master key {id} still seals {in_use} stored secrets: run `thermos keys reencrypt` first");
        }
        bail!(
            "no stored secret uses master key {id}; the keys come from {MASTER_KEY_ENV}, which this command \
             cannot change: remove the key from it and restart every instance"
        );
    }
    let path = &config.security.master_key_file;
    let mut entries = file_entries(config, "retire a master key")?;
    let Some(position) = entries.iter().position(|e| e.id == *id) else {
        bail!("master key {id} is not in {}", path.display());
    };
    if position == 0 {
        bail!("master key {id} is the primary: rotate or promote another key first");
    }
    if in_use > 0 {
        bail!(
            "master key {id} still seals {} stored secrets: run `thermos keys reencrypt` first",
            thousands(in_use)
        );
    }
    entries.remove(position);
    write_key_file(path, &entries)?;
    eprintln!(
        "Retired master key {id} from {}. Keep a copy as long as you keep database backups sealed under it.",
        path.display()
    );
    Ok(())
}

/// `12500` as `12,500`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_shown_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12_500), "12,500");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
