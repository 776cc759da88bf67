//! Throw-away certificates for TLS tests: a CA, one node certificate valid for
//! 127.0.0.1 and localhost (serverAuth + clientAuth, as every coordinator is both
//! a server and a client of its peers), and an operator's client certificate.

use anyhow::{Context, Result};
use primus_client::TlsOptions;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// PEM files written into one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, pem).with_context(|| format!("write {}", p.display()))?;
    Ok(p)
}

impl TestPki {
    /// Generate a fresh CA and certificates into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Result<TestPki> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        ca_params.distinguished_name.push(DnType::CommonName, "primus test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key).context("self-sign CA")?;

        let leaf = |cn: &str, sans: Vec<String>, ekus: Vec<ExtendedKeyUsagePurpose>| -> Result<(String, String)> {
            let key = KeyPair::generate().context("leaf key")?;
            let mut params = CertificateParams::new(sans).context("leaf params")?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = ekus;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &ca, &ca_key).context("sign leaf")?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (node_cert, node_key) = leaf(
            "primusd",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        let (client_cert, client_key) = leaf("operator", vec![], vec![ExtendedKeyUsagePurpose::ClientAuth])?;
        Ok(TestPki {
            ca: write(dir, "ca.pem", &ca.pem())?,
            node_cert: write(dir, "node.pem", &node_cert)?,
            node_key: write(dir, "node.key", &node_key)?,
            client_cert: write(dir, "client.pem", &client_cert)?,
            client_key: write(dir, "client.key", &client_key)?,
        })
    }

    /// Client TLS options trusting this CA, with or without the client certificate.
    pub fn client_tls(&self, with_client_cert: bool) -> Result<TlsOptions> {
        let (cert, key) = if with_client_cert {
            (Some(self.client_cert.as_path()), Some(self.client_key.as_path()))
        } else {
            (None, None)
        };
        Ok(TlsOptions::from_files(&self.ca, cert, key)?)
    }

    /// The `[tls]` section for a primusd using these files.
    pub fn tls_section(&self, require_client_cert: bool) -> String {
        format!(
            "\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\nrequire_client_cert = {require_client_cert}\n",
            self.node_cert.display(),
            self.node_key.display(),
            self.ca.display()
        )
    }
}
