//! `cert list|show`: issued certificates, local or remote.

use super::*;

pub(super) async fn cert(args: CertArgs, data_dir: &std::path::Path, url: &str) -> Result<()> {
    let admin = Admin::open(&args.remote, data_dir, url).await?;
    match args.command {
        CertCommand::List {
            expiring,
            host,
            stale,
            renew_grace,
            json,
        } => {
            let q = CertQuery {
                host,
                expiring_secs: expiring.map(|d| std::time::Duration::from(d).as_secs()),
                stale,
                renew_grace_secs: renew_grace.map(|d| std::time::Duration::from(d).as_secs()),
            };
            admin_output::cert_list(&admin.cert_list(&q).await?, json)
        }
        CertCommand::Show { target, json } => {
            admin_output::cert_show(&admin.cert_show(&target).await?, json)
        }
    }
}
