//! `mofang keyring ...`: the data keyring that seals secrets in the store, and the root
//! keyring file that seals it (admin; docs/secrets.md).

use super::render::{compact, ms_to_time, print_json, render_table};
use anyhow::Result;
use clap::Subcommand;
use mofang_scheduler::client::Client;
use mofang_scheduler::secrets::KeyringStatus;

#[derive(Subcommand, Debug)]
pub(crate) enum KeyringCmd {
    /// Keys, the active one, and how many stored secrets each seals. A key that is no
    /// longer listed is retired: nothing in the store is sealed with it.
    Status,
    /// A new key seals from now on; every stored secret is sealed again with it and older
    /// keys that seal nothing any more are retired.
    Rotate,
    /// Rotate the root keyring file (`keyring_file`) on the leader: a new root key seals the
    /// data keyring, the old one leaves the file. Then copy the file to every other
    /// scheduler.
    RotateRoot,
}

/// Runs `mofang keyring ...`.
pub(crate) async fn run(c: &Client, cmd: KeyringCmd, json: bool) -> Result<()> {
    match cmd {
        KeyringCmd::Status => {
            let status = c.keyring().await?;
            if json {
                print_json(&status);
                return Ok(());
            }
            print!("{}", render_keyring(&status));
        }
        KeyringCmd::Rotate => {
            let r = c.rotate_keyring().await?;
            if json {
                print_json(&r);
                return Ok(());
            }
            println!(
                "key {} is active; {} instance(s) sealed again",
                r.active_key, r.resealed_instances
            );
            if r.retired_keys.is_empty() {
                println!("no key retired");
            } else {
                println!(
                    "retired keys: {:?} (nothing in the store is sealed with them)",
                    r.retired_keys
                );
            }
            print!("{}", render_keyring(&r.status));
        }
        KeyringCmd::RotateRoot => {
            let r = c.rotate_root_keyring().await?;
            if json {
                print_json(&r);
                return Ok(());
            }
            println!(
                "root key {} seals the data keyring; retired root keys: {}",
                r.root_key,
                compact(&r.retired_root_keys)
            );
            println!("{}", r.next);
        }
    }
    Ok(())
}

/// The keys with what each seals, then what is not yet sealed with the active one.
fn render_keyring(k: &KeyringStatus) -> String {
    let rows = k
        .keys
        .iter()
        .map(|key| {
            vec![
                key.id.to_string(),
                if key.active { "yes" } else { "" }.to_owned(),
                key.sealed_values.to_string(),
                ms_to_time(key.created_at_ms),
            ]
        })
        .collect();
    let mut text = render_table(&["KEY", "ACTIVE", "SEALED", "CREATED"], rows);
    if k.clear_values > 0 || k.pending_instances > 0 || k.pending_records > 0 {
        text.push_str(&format!(
            "{} secret(s) in clear, {} instance(s) and {} other record(s) not yet sealed with the active key: re-encryption pending\n",
            k.clear_values, k.pending_instances, k.pending_records
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_scheduler::secrets::KeyStatus;

    #[test]
    fn the_keyring_says_what_is_not_sealed_yet() {
        let key = |id, active, sealed| KeyStatus {
            id,
            created_at_ms: 0,
            active,
            sealed_values: sealed,
        };
        let mut k = KeyringStatus {
            active_key: 2,
            keys: vec![key(1, false, 3), key(2, true, 5)],
            clear_values: 0,
            pending_instances: 0,
            pending_records: 0,
        };
        let text = render_keyring(&k);
        assert_eq!(text.lines().count(), 3, "{text}");
        let active: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(active, ["2", "yes", "5", "00:00:00.000Z"], "{text}");
        k.pending_instances = 1;
        assert!(render_keyring(&k).ends_with(
            "0 secret(s) in clear, 1 instance(s) and 0 other record(s) not yet sealed with the active key: re-encryption pending\n"
        ));
    }
}
