//! A member certificate renewed in place before it expires (as init
//! renews an etcd member's, which is also the orchestrator's client
//! certificate): etcd serves the new one without a restart, and a store
//! that connected with the old one reconnects with the new one after the
//! old has expired. `cargo test -p orchestrator-store-etcd --test tls`

use std::path::Path;
use std::time::{Duration, Instant};

use orchestrator_store::Store;
use orchestrator_store_etcd::local::{self, LocalCluster, ServerTls};
use orchestrator_store_etcd::{ClientTls, EtcdConfig, EtcdStore};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA, and its key pair (PEM, PEM).
fn ca() -> (String, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "test etcd CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(p, key))
}

/// A member certificate for 127.0.0.1, serving and client (as init's),
/// valid from a minute ago for `lifetime`: (cert, key) PEM.
fn member(ca: &Issuer<'static, KeyPair>, lifetime: Duration) -> (String, String) {
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "m0");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + lifetime;
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `text` to `path` through a rename, as init writes certificates.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_member_certificate_renewed_in_place_is_used_by_etcd_and_the_store() {
    if !local::available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = ca();
    let short = Duration::from_secs(10);
    let (cert, key) = member(&ca, short);
    let issued = Instant::now();
    let files =
        ServerTls { ca: d.path().join("ca.crt"), cert: d.path().join("member.crt"), key: d.path().join("member.key") };
    replace(&files.ca, &ca_pem);
    replace(&files.cert, &cert);
    replace(&files.key, &key);
    let mut etcd = LocalCluster::start_with(&d.path().join("etcd"), 1, Some(files.clone())).unwrap();
    let cfg = EtcdConfig {
        tls: Some(ClientTls { ca: files.ca.clone(), cert: files.cert.clone(), key: files.key.clone() }),
        ..EtcdConfig::from_url(&etcd.url(), None).unwrap()
    };
    let store = EtcdStore::connect(&cfg).unwrap();
    store.create("/tls/before", b"1").unwrap();

    // Renewed, the same files, etcd left running.
    let (cert, key) = member(&ca, Duration::from_secs(3600));
    replace(&files.key, &key);
    replace(&files.cert, &cert);
    std::thread::sleep((short + Duration::from_secs(2)).saturating_sub(issued.elapsed()));

    // The old certificate has expired: a new client is served the new one.
    let fresh = EtcdStore::connect(&cfg).unwrap_or_else(|e| panic!("etcd did not take the renewed certificate: {e}"));
    fresh.create("/tls/fresh", b"1").unwrap();
    // The member restarts: the store's new connection presents the new one.
    etcd.kill(0);
    etcd.restart(0).unwrap();
    store.create("/tls/after", b"1").unwrap_or_else(|e| panic!("the store kept the expired certificate: {e}"));
}
