//! `psk add|batch|list|remove`: the spawner's verbs, local or remote, and
//! the bundle file `psk add --bundle` writes.

use super::*;

pub(super) async fn psk(
    args: PskArgs,
    data_dir: &std::path::Path,
    url: &str,
    reserved: &policy::ReservedNames,
) -> Result<()> {
    let admin = Admin::open(&args.remote, data_dir, url).await?;
    match args.command {
        PskCommand::Add {
            host,
            ttl,
            sans,
            psk_stdin,
            json,
            server_url,
            bundle,
        } => {
            // Checked before the PSK exists, so a bundle is never short of it.
            if bundle.is_some() && server_url.is_none() && matches!(admin, Admin::Local { .. }) {
                return Err(UsageError(
                    "--bundle needs the URL hosts reach the CA at: --server-url URL (or CA_PUBLIC_URL)"
                        .into(),
                )
                .into());
            }
            let mut req = PskAddRequest {
                hostname: host,
                ttl_secs: std::time::Duration::from(ttl).as_secs(),
                sans,
                psk: None,
            };
            if psk_stdin {
                let mut buf = zeroize::Zeroizing::new(String::new());
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .context("reading the PSK from stdin")?;
                req.psk = Some(buf.trim().to_owned());
            }
            let mut added = admin.psk_add(req, reserved).await?;
            if server_url.is_some() {
                added.server_url = server_url;
            }
            match bundle {
                Some(path) => write_bundle(&added, &path, json),
                None => admin_output::psk_added(&added, json),
            }
        }
        PskCommand::Batch { ttl, sans } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading hostnames from stdin")?;
            let req = PskBatchRequest {
                hostnames: input
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
                ttl_secs: std::time::Duration::from(ttl).as_secs(),
                sans,
            };
            admin_output::psk_batch(&admin.psk_batch(&req, reserved).await?);
            Ok(())
        }
        PskCommand::List { json } => {
            admin_output::psk_list(&admin.psk_list().await?, SystemClock.now(), json)
        }
        PskCommand::Remove { host } => {
            admin.psk_remove(&host).await?;
            eprintln!("removed the PSK of {}", escape_for_display(&host));
            Ok(())
        }
    }
}

/// `psk add --bundle FILE`: the PSK goes into the bundle (0600) only.
fn write_bundle(added: &PskAdded, path: &std::path::Path, json: bool) -> Result<()> {
    let (Some(server), Some(fingerprint)) = (&added.server_url, &added.fingerprint) else {
        bail!(
            "the PSK of {} was created, but the bundle needs the server URL (--server-url) \
             and the root fingerprint; run psk add again with them",
            escape_for_display(&added.hostname)
        );
    };
    let bundle = proto::bundle::Bundle {
        server: server.clone(),
        fingerprint: fingerprint.clone(),
        hostname: added.hostname.clone(),
        psk: Psk::new(added.psk.clone())?,
        sans: added.allowed_sans.clone(),
        expires_at: added.expires_at.clone(),
    };
    bundle.write(path)?;
    if json {
        let out = serde_json::json!({
            "hostname": added.hostname,
            "bundle": path,
            "expires_at": added.expires_at,
            "allowed_sans": added.allowed_sans,
            "fingerprint": fingerprint,
            "server_url": server,
        });
        println!("{out}");
    } else {
        eprintln!(
            "wrote the bootstrap bundle for {} to {} (expires {})",
            escape_for_display(&added.hostname),
            path.display(),
            added.expires_at
        );
    }
    Ok(())
}
