//! Admin certificates: their profile, the mark that tells them from host
//! certificates, and `ca-server admin-cert issue NAME --out DIR`.
//!
//! An admin certificate is a client certificate from the intermediate with
//!
//! - the extended key usages `clientAuth` and [`ADMIN_EKU_OID`], a private
//!   OID (under `2.25`, the UUID arc, so nobody else's) that the host
//!   profile never emits: every host, renewal and Puppet leaf is signed by
//!   `ca::Signer::sign_leaf`, whose EKU is fixed to `serverAuth` +
//!   `clientAuth`, and nothing a CSR requests reaches a certificate;
//! - no `serverAuth` and no subject alternative name: it cannot serve TLS
//!   as a host;
//! - the subject `CN=<name>, OU=ca-server admin` (hosts get `CN=<hostname>`
//!   alone), and the store row `kind = admin`, `hostname = admin:<name>`
//!   (a colon is never in a hostname, so `revoke --host` and `cert list
//!   --host` cannot mix the two).
//!
//! Every admin request needs both the row (`kind = admin`, the exact DER)
//! and the EKU mark in the presented certificate ([`crate::admin::auth`]).

use crate::admin::actor;
use crate::clock::Clock;
use crate::pki::ca::{CaPaths, SignedLeaf, Signer};
use crate::store::{AuditEvent, Store};
use crate::store::{CertKind, Event, Outcome};
use anyhow::{Context, Result, bail};
use proto::files::{CA_FILE, CERT_FILE, CHAIN_FILE, KEY_FILE};
use proto::fsutil::{self, KEY_MODE, PUBLIC_MODE};
use proto::keys::{HostKey, KeyType};
use proto::timefmt::rfc3339;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The UUID behind [`ADMIN_EKU_OID`] (ITU-T X.667: an OID anyone may mint
/// from a random UUID without registration).
pub const ADMIN_EKU_UUID: u128 = 0xab2e64fe_ca15_4b95_abc8_e2c2aa25cf71;
/// The dotted form of the admin EKU: `2.25.<ADMIN_EKU_UUID as an integer>`.
pub const ADMIN_EKU_OID: &str = "2.25.227538881362168576492200639827097800561";
/// `id-kp-clientAuth`.
const CLIENT_AUTH_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// `id-ce-extKeyUsage` (2.5.29.37).
const EKU_EXTENSION: &[u64] = &[2, 5, 29, 37];
/// The organisational unit of every admin certificate's subject.
pub const ADMIN_OU: &str = "ca-server admin";
/// The store's `hostname` for an admin certificate of `name`.
pub const STORE_PREFIX: &str = "admin:";
/// Default lifetime of an admin certificate.
pub const DEFAULT_VALIDITY: &str = "365d";

/// The content octets of `2.25.<uuid>` (the two first arcs are one byte,
/// 2*40+25; the UUID follows in base 128, high groups flagged).
fn admin_oid_content() -> Vec<u8> {
    let mut groups = Vec::new();
    let mut n = ADMIN_EKU_UUID;
    loop {
        groups.push((n & 0x7f) as u8);
        n >>= 7;
        if n == 0 {
            break;
        }
    }
    let mut out = vec![2 * 40 + 25];
    for (i, g) in groups.iter().enumerate().rev() {
        out.push(if i > 0 { g | 0x80 } else { *g });
    }
    out
}

/// DER of `ExtKeyUsageSyntax ::= SEQUENCE { clientAuth, admin }`.
fn admin_eku_der() -> Vec<u8> {
    let admin = admin_oid_content();
    let mut seq = vec![0x06, CLIENT_AUTH_OID.len() as u8];
    seq.extend_from_slice(CLIENT_AUTH_OID);
    seq.extend_from_slice(&[0x06, admin.len() as u8]);
    seq.extend_from_slice(&admin);
    let mut out = vec![0x30, seq.len() as u8];
    out.extend_from_slice(&seq);
    out
}

/// Whether a certificate (DER) carries the admin EKU.
pub fn has_admin_mark(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    // Compared as encoded arcs: the UUID arc is beyond 64 bits, which the
    // parser's dotted-string form does not spell out.
    let mark = admin_oid_content();
    matches!(
        cert.extended_key_usage(),
        Ok(Some(eku)) if eku.value.other.iter().any(|oid| oid.as_bytes() == mark.as_slice())
    )
}

/// An admin name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !ok {
        bail!(
            "admin name {}: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
            policy::hostname::escape_for_display(name)
        );
    }
    Ok(())
}

/// The certificate fields of an admin certificate for `name` (the rest is
/// what every leaf shares: `Signer::sign_end_entity`).
fn admin_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, ADMIN_OU);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Written as a custom extension: rcgen's EKU type holds 64-bit arcs only.
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        EKU_EXTENSION,
        admin_eku_der(),
    )];
    params
}

/// Signs an admin certificate for `name` and `spki_der`.
pub fn sign_admin(
    signer: &Signer,
    name: &str,
    spki_der: &[u8],
    now: i64,
    validity: Duration,
) -> Result<SignedLeaf> {
    validate_name(name)?;
    signer.sign_end_entity(admin_params(name), spki_der, now, validity)
}

/// `ca-server admin-cert ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCertCommand {
    /// Issue an admin client certificate for the admin API (mTLS) and write
    /// key.pem (0600), cert.pem, chain.pem and ca.pem (the root to pin) into
    /// DIR. Needs the intermediate key in the data dir. List and revoke admin
    /// certificates with `cert list` and `revoke` (kind=admin, host admin:NAME).
    Issue {
        /// Who holds it (1-64 of a-z 0-9 . _ -), e.g. the spawner's name.
        name: String,
        /// Directory to write into (created 0700; must not hold a key already).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime (capped by the intermediate's).
        #[arg(long, default_value = DEFAULT_VALIDITY)]
        validity: humantime::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `admin-cert issue`: sign, record (kind admin, audited with the
/// operator as actor), then write the directory.
pub async fn run(
    cmd: AdminCertCommand,
    data_dir: &Path,
    url: &str,
    clock: &dyn Clock,
) -> Result<()> {
    let AdminCertCommand::Issue {
        name,
        out,
        validity,
        json,
    } = cmd;
    validate_name(&name)?;
    for file in [KEY_FILE, CERT_FILE] {
        if out.join(file).exists() {
            bail!(
                "{} already holds {file}; issue into a new directory",
                out.display()
            );
        }
    }
    let paths = CaPaths::new(data_dir);
    let signer = Signer::load(&paths, None)
        .with_context(|| format!("loading the intermediate from {}", data_dir.display()))?;
    let key = HostKey::generate(KeyType::P256)?;
    let spki = key.spki_der();
    let now = clock.now();
    let leaf = sign_admin(&signer, &name, &spki, now, validity.into())?;
    let hostname = format!("{STORE_PREFIX}{name}");
    let record = leaf.to_record(&hostname, CertKind::Admin, &spki, now);
    let store = Store::open(url).await?;
    store
        .record_certificate(
            &record,
            &AuditEvent {
                at: now,
                event: Event::AdminCertIssued.into(),
                hostname: Some(hostname.clone()),
                serial: Some(leaf.serial.clone()),
                outcome: Outcome::Issued.into(),
                reason: Some(format!("admin certificate for {name}")),
                actor: Some(actor()),
                ..Default::default()
            },
        )
        .await
        .context("recording the admin certificate")?;

    fsutil::private_key_dir(&out)?;
    let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.der.clone()));
    let root_pem = pem::encode(&pem::Pem::new("CERTIFICATE", signer.root_der.clone()));
    fsutil::write_atomic(&out.join(CA_FILE), root_pem.as_bytes(), PUBLIC_MODE)?;
    fsutil::write_atomic(
        &out.join(CHAIN_FILE),
        signer.chain_pem(&leaf.der).as_bytes(),
        PUBLIC_MODE,
    )?;
    fsutil::write_atomic(&out.join(CERT_FILE), leaf_pem.as_bytes(), PUBLIC_MODE)?;
    fsutil::write_atomic(&out.join(KEY_FILE), key.pem().as_bytes(), KEY_MODE)?;

    if json {
        let v = serde_json::json!({
            "name": name,
            "hostname": hostname,
            "serial": leaf.serial,
            "not_after": rfc3339(leaf.not_after),
            "dir": out,
            "fingerprint": signer.fingerprint,
        });
        println!("{v}");
    } else {
        println!(
            "issued admin certificate {name} serial={} not_after={} dir={}",
            leaf.serial,
            rfc3339(leaf.not_after),
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::LeafRequest;
    use crate::testing::{NOW, fixture};
    use policy::{AllowedName, KeyKind, Profile};

    #[test]
    fn the_admin_oid_encodes_as_its_dotted_form() {
        // Computed independently (Python: the UUID's integer in base 128).
        let expected = [
            0x69, 0x82, 0xd6, 0xae, 0xb2, 0xbf, 0xd9, 0xa1, 0xaa, 0xae, 0xab, 0xab, 0xe4, 0xb8,
            0xd8, 0xaa, 0xd1, 0x97, 0x9e, 0x71,
        ];
        assert_eq!(admin_oid_content(), expected);
        assert_eq!(
            ADMIN_EKU_OID,
            format!("2.25.{}", ADMIN_EKU_UUID),
            "the constant and its dotted form agree"
        );
    }

    #[tokio::test]
    async fn admin_certificates_carry_the_mark_and_host_certificates_never_do() {
        let f = fixture().await;
        let key = HostKey::generate(KeyType::P256).unwrap();
        let admin = sign_admin(
            &f.signer,
            "spawner-1",
            &key.spki_der(),
            NOW,
            Duration::from_secs(86_400),
        )
        .unwrap();
        assert!(has_admin_mark(&admin.der));
        let (_, cert) = x509_parser::parse_x509_certificate(&admin.der).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "CN=spawner-1, OU=ca-server admin"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(cert.subject_alternative_name().unwrap().is_none());
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        let (_, int) = x509_parser::parse_x509_certificate(&f.signer.intermediate_der).unwrap();
        cert.verify_signature(Some(int.public_key())).unwrap();

        // The host profile (first issuance, renewal, Puppet: all sign_leaf).
        let host = f
            .signer
            .sign_leaf(&LeafRequest {
                profile: &Profile::new(
                    "spawner-1.example",
                    &[AllowedName::Dns("x.example".into())],
                ),
                key: KeyKind::EcdsaP256,
                spki_der: &key.spki_der(),
                now: NOW,
                validity: Duration::from_secs(86_400),
            })
            .unwrap();
        assert!(!has_admin_mark(&host.der));
        assert!(!has_admin_mark(b"not a certificate"));
    }

    #[test]
    fn admin_names_are_restricted() {
        for ok in ["spawner", "spawner-1", "ci.deploy_2", "a"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-x", "Spawner", "a b", "a:b", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
