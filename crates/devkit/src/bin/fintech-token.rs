//! `fintech-token`: prints a token signed by the local development key (`deploy/local/token`).
//!
//! ```text
//! fintech-token [--sub SUBJECT] [--customer CUSTOMER_ID] [--scope 'SCOPE ...'] [--all-scopes]
//!               [--ttl SECONDS] [--issuer ISS] [--audience AUD] [--key-dir DIR]
//! fintech-token init [--key-dir DIR]     # create the key and its JWKS if absent
//! ```
//!
//! The key directory is `--key-dir`, else `FINTECH_AUTH_DIR`, else `.local/auth` of the
//! repository around the current directory.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fintech_devkit::auth::{ALL_SCOPES, Claims, DEV_AUDIENCE, DEV_ISSUER, SigningKey, local_key_dir, parse_scopes};

const USAGE: &str = "usage: token [--sub SUBJECT] [--customer CUSTOMER_ID] [--scope 'SCOPE ...'] [--all-scopes] \
                     [--ttl SECONDS] [--issuer ISS] [--audience AUD] [--key-dir DIR] | token init [--key-dir DIR]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let init = args.peek().is_some_and(|arg| arg == "init");
    if init {
        args.next();
    }
    let mut sub: Option<String> = None;
    let mut customer: Option<String> = None;
    let mut scopes: Vec<String> = Vec::new();
    let mut all_scopes = false;
    let mut ttl: u64 = 3600;
    let mut issuer = DEV_ISSUER.to_owned();
    let mut audience = DEV_AUDIENCE.to_owned();
    let mut key_dir: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--sub" => sub = Some(value("--sub")?),
            "--customer" => customer = Some(value("--customer")?),
            "--scope" => scopes.extend(parse_scopes(&value("--scope")?)?),
            "--all-scopes" => all_scopes = true,
            "--ttl" => {
                ttl = value("--ttl")?.parse().context("--ttl: seconds")?;
                if !(1..=31 * 24 * 3600).contains(&ttl) {
                    bail!("--ttl: between 1 second and 31 days");
                }
            }
            "--issuer" => issuer = value("--issuer")?,
            "--audience" => audience = value("--audience")?,
            "--key-dir" => key_dir = Some(PathBuf::from(value("--key-dir")?)),
            "-h" | "--help" => {
                writeln!(std::io::stdout(), "{USAGE}")?;
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let dir = key_dir.unwrap_or_else(local_key_dir);
    if init {
        let key = SigningKey::load_or_create(&dir)?;
        writeln!(std::io::stdout(), "{} (kid {})", dir.display(), key.kid())?;
        return Ok(());
    }
    if all_scopes {
        scopes = ALL_SCOPES.iter().map(|scope| (*scope).to_owned()).collect();
    }
    if scopes.is_empty() {
        bail!("no scope: pass --scope 'SCOPE ...' or --all-scopes\n{USAGE}");
    }
    let key = SigningKey::load(&dir)?;
    let sub = match (sub, &customer) {
        (Some(sub), _) => sub,
        (None, Some(customer)) => format!("customer:{customer}"),
        (None, None) => "local-operator".to_owned(),
    };
    let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let claims = Claims {
        iss: issuer,
        aud: audience,
        customer_id: customer,
        ..Claims::new(&sub, &scope_refs, Duration::from_secs(ttl))
    };
    writeln!(std::io::stdout(), "{}", key.mint(&claims))?;
    Ok(())
}
