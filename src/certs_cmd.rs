//! `edgevla certs`: a certificate authority and one certificate per role for the secure zenoh
//! profile (mutual TLS + access control by certificate common name; docs/security.md).
//!
//! Written with rcgen rather than by calling `openssl`: nothing outside the binary is needed on
//! the robot, and the names and lifetimes are the ones the shipped access rules expect.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Arguments of `edgevla certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Folder to write into (created; files already there are never overwritten): `ca.pem`,
    /// `ca.key`, and `<name>.pem` + `<name>.key` for every --name.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Roles to issue certificates for; each becomes the certificate's common name, which the
    /// access control rules name (the shipped profile: router, robot, driver, sim, operator, observer).
    #[arg(
        long = "name",
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "router,robot,driver,sim,operator,observer"
    )]
    pub names: Vec<String>,

    /// Host names and IP addresses the certificates are valid for (checked by a peer that
    /// connects with `verify_name_on_connect`).
    #[arg(
        long = "host",
        value_name = "HOST",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub hosts: Vec<String>,

    /// Days the certificates stay valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,

    /// Issue with the CA already in --out (`ca.pem` + `ca.key`) instead of a new one: adds
    /// roles to a deployed profile.
    #[arg(long)]
    pub reuse_ca: bool,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes `text` to `path`, refusing to replace a file; keys are readable by the owner only.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).with_context(|| {
        format!(
            "creating {} (existing files are never overwritten)",
            path.display()
        )
    })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `edgevla certs`; prints what it wrote.
///
/// # Errors
/// A name that is not a plain role name, a file that already exists, an unreadable CA with
/// --reuse-ca, or a write failure.
pub fn certs(args: &CertsArgs, out: &mut impl Write) -> Result<()> {
    if args.names.is_empty() {
        bail!("--name: give at least one role");
    }
    for name in &args.names {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!("--name {name:?}: use letters, digits, '-', '_' or '.' (it names files)");
        }
    }
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let issuer = if args.reuse_ca {
        let pem = std::fs::read_to_string(args.out.join("ca.pem")).context("--reuse-ca: ca.pem")?;
        let key = std::fs::read_to_string(args.out.join("ca.key")).context("--reuse-ca: ca.key")?;
        let key = KeyPair::from_pem(&key).context("--reuse-ca: ca.key is not a PEM private key")?;
        Issuer::from_ca_cert_pem(&pem, key)
            .context("--reuse-ca: ca.pem is not a PEM CA certificate")?
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "edgevla CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, args.days);
        let cert = params.self_signed(&key)?;
        write_new(&args.out.join("ca.pem"), &cert.pem(), false)?;
        write_new(&args.out.join("ca.key"), &key.serialize_pem(), true)?;
        writeln!(
            out,
            "{}: certificate authority (keep ca.key off the robot)",
            args.out.join("ca.pem").display()
        )?;
        Issuer::new(params, key)
    };
    for name in &args.names {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for host in &args.hosts {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.clone()
                        .try_into()
                        .with_context(|| format!("--host {host:?}"))?,
                ),
            });
        }
        params.distinguished_name.push(DnType::CommonName, name);
        validity(&mut params, args.days);
        let cert = params.signed_by(&key, &issuer)?;
        write_new(&args.out.join(format!("{name}.pem")), &cert.pem(), false)?;
        write_new(
            &args.out.join(format!("{name}.key")),
            &key.serialize_pem(),
            true,
        )?;
        writeln!(
            out,
            "{}: CN={name}, valid {} days for {}",
            args.out.join(format!("{name}.pem")).display(),
            args.days,
            args.hosts.join(", ")
        )?;
    }
    Ok(())
}
