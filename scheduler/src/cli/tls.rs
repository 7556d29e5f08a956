//! `mofang tls ...`: the cluster PKI from the command line (like `consul tls ca create` and
//! `nomad tls cert create`), and the CLI's own TLS towards the REST API: the CA it trusts
//! (`--ca-cert` / `MOFANG_CACERT`) and the certificate it may present
//! (`MOFANG_CLIENT_CERT` / `MOFANG_CLIENT_KEY`).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mofang_common::tls::files;
use mofang_common::tls::pki::{san, Ca, CertKind};
use mofang_common::tls::KeyPairFiles;
use std::path::{Path, PathBuf};

/// `mofang tls`.
#[derive(Subcommand, Debug)]
pub enum TlsCmd {
    /// The cluster CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Certificates signed by the cluster CA.
    #[command(subcommand)]
    Cert(CertCmd),
}

/// `mofang tls ca`.
#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Create the cluster CA: `<dir>/ca.pem` (give it to agents and users) and
    /// `<dir>/ca-key.pem` (0600; only schedulers that sign join requests need it).
    Create {
        /// Where to write.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Validity, days.
        #[arg(long, default_value_t = 1825)]
        days: u32,
        /// The CA's name (subject CN).
        #[arg(long, default_value = "Mofang CA")]
        name: String,
    },
}

/// `mofang tls cert`.
#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Create a key and a certificate signed by the CA: `<dir>/<kind>-<name>.pem` and
    /// `<dir>/<kind>-<name>-key.pem` (0600).
    #[command(group(clap::ArgGroup::new("kind").required(true).args(["server", "agent", "cli"])))]
    Create {
        /// A scheduler's certificate (REST and gRPC): names NAME, server.mofang, localhost,
        /// 127.0.0.1 and every --san.
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
        /// An agent's certificate: it may act as node NODE only.
        #[arg(long, value_name = "NODE")]
        agent: Option<String>,
        /// An operator's client certificate (MOFANG_CLIENT_CERT).
        #[arg(long, value_name = "NAME")]
        cli: Option<String>,
        /// The CA certificate. Default `<dir>/ca.pem`.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The CA key. Default `<dir>/ca-key.pem`.
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// Where to write.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// More names (DNS names or IP addresses) the certificate is valid for: the
        /// addresses clients dial the scheduler at.
        #[arg(long, value_name = "ADDR", num_args = 1..)]
        san: Vec<String>,
        /// Validity, days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    files::write(path, text.as_bytes(), mode, false).with_context(|| {
        format!(
            "cannot write {} (an existing file is never replaced: remove it first)",
            path.display()
        )
    })
}

/// Runs `mofang tls ...`.
pub fn run(cmd: TlsCmd) -> Result<()> {
    match cmd {
        TlsCmd::Ca(CaCmd::Create { dir, days, name }) => {
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
            for p in [&cert, &key] {
                if p.exists() {
                    bail!("{} exists: a CA is never replaced by accident; remove it first (every certificate it signed stops being trusted)", p.display());
                }
            }
            let ca = Ca::create(&name, days)?;
            write(&key, &ca.key_pem(), files::PRIVATE)?;
            write(&cert, ca.cert_pem(), files::PUBLIC)?;
            println!("==> CA certificate: {}", cert.display());
            println!("==> CA key (0600):  {}", key.display());
        }
        TlsCmd::Cert(CertCmd::Create {
            server,
            agent,
            cli,
            ca,
            ca_key,
            dir,
            san: sans,
            days,
        }) => {
            let kind = match (server, agent, cli) {
                (Some(n), None, None) => CertKind::Server(n),
                (None, Some(n), None) => CertKind::Agent(n),
                (None, None, Some(n)) => CertKind::Cli(n),
                _ => bail!("give exactly one of --server, --agent, --cli"),
            };
            let ca_path = ca.unwrap_or_else(|| dir.join("ca.pem"));
            let key_path = ca_key.unwrap_or_else(|| dir.join("ca-key.pem"));
            let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
                format!(
                    "cannot read the CA certificate {} (--ca)",
                    ca_path.display()
                )
            })?;
            let ca_key_pem = std::fs::read_to_string(&key_path).with_context(|| {
                format!("cannot read the CA key {} (--ca-key)", key_path.display())
            })?;
            let ca = Ca::load(&ca_pem, &ca_key_pem).with_context(|| {
                format!("CA {} with key {}", ca_path.display(), key_path.display())
            })?;
            let extra = sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;
            let issued = ca.issue(&kind, &extra, days)?;
            let base = format!("{}-{}", kind.label(), kind.name());
            let (cert, key) = (
                dir.join(format!("{base}.pem")),
                dir.join(format!("{base}-key.pem")),
            );
            for p in [&cert, &key] {
                if p.exists() {
                    bail!("{} exists; remove it first", p.display());
                }
            }
            write(&key, &issued.key_pem, files::PRIVATE)?;
            write(&cert, &issued.cert_pem, files::PUBLIC)?;
            println!("==> certificate: {}", cert.display());
            println!("==> key (0600):  {}", key.display());
        }
    }
    Ok(())
}

/// The CLI's HTTP client: trusting `ca` (none: the bundled public roots, which do not
/// know a cluster CA) and presenting `own` when given.
pub fn http_client(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<reqwest::Client> {
    let own = match (cert, key) {
        (Some(c), Some(k)) => Some(KeyPairFiles {
            cert: c.to_owned(),
            key: k.to_owned(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            bail!("--client-cert (MOFANG_CLIENT_CERT) needs --client-key (MOFANG_CLIENT_KEY)")
        }
        (None, Some(_)) => {
            bail!("--client-key (MOFANG_CLIENT_KEY) needs --client-cert (MOFANG_CLIENT_CERT)")
        }
    };
    let builder = reqwest::Client::builder();
    let builder = match ca {
        Some(ca) => {
            let cfg = mofang_common::tls::client_config(ca, own.as_ref())
                .context("TLS settings (--ca-cert, --client-cert, --client-key)")?;
            builder.use_preconfigured_tls(cfg)
        }
        None if own.is_some() => {
            bail!("a client certificate needs the cluster CA: give --ca-cert (MOFANG_CACERT)")
        }
        None => builder,
    };
    builder.build().context("building the HTTP client")
}

/// A failed request, said for an operator: an untrusted or unusable scheduler certificate
/// is named as such, with what to do.
pub fn explain_send_error(e: &reqwest::Error, addr: &str, has_ca: bool) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(t) = tls {
            let hint = if has_ca {
                "check that --ca-cert (MOFANG_CACERT) is the cluster CA and the address is one the scheduler's certificate names"
            } else {
                "give the cluster CA with --ca-cert or MOFANG_CACERT"
            };
            return format!(
                "TLS with the scheduler at {addr} failed: {}; {hint}",
                mofang_common::tls::explain(t)
            );
        }
        src = err.source();
    }
    let mut text = format!(
        "cannot reach the scheduler at {addr}: {}",
        mofang_common::error_chain(e)
    );
    // The rustls error can sit inside an io::Error the chain skips (io::Error's source is
    // its inner error's source): read its text.
    if let Some((_, why)) = text.split_once("invalid peer certificate: ") {
        let said = if why.starts_with("UnknownIssuer") {
            "the scheduler's certificate is not signed by the trusted CA"
        } else if why.starts_with("Expired") {
            "the scheduler's certificate has expired"
        } else if why.starts_with("NotValidForName") {
            "the scheduler's certificate is not valid for the address dialed (add it with --san)"
        } else {
            why
        };
        let hint = if has_ca {
            "check that --ca-cert (MOFANG_CACERT) is the cluster CA"
        } else {
            "give the cluster CA with --ca-cert or MOFANG_CACERT"
        };
        return format!("TLS with the scheduler at {addr} failed: {said}; {hint}");
    }
    if addr.starts_with("http://") && text.contains("connection closed") {
        text.push_str(" (does it speak HTTPS? use https://)");
    }
    text
}

/// Seconds in a duration like `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?}: a number with s, m, h or d, e.g. 1h"))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("{s:?}: unknown unit {other:?} (s, m, h or d)"),
    };
    Ok(n.saturating_mul(mul))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800);
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
