//! A certificate authority for mutual TLS tests, made with the `openssl`
//! command: a CA, and component certificates it signs, each naming its
//! component as a DNS name (as cert-manager issues them in production).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// A CA whose key and certificate live in a directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

/// A component's certificate and key, as files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Writes `content` to `to` through a temporary file and a rename, as
/// the kubelet swaps a mounted Secret: a reader sees the old file or the
/// new one, never half of one.
pub fn replace_file(to: &Path, from: &Path) {
    let staged = to.with_extension("staged");
    std::fs::copy(from, &staged).expect("copy");
    std::fs::rename(&staged, to).expect("rename");
}

impl TestCa {
    /// A new CA (EC P-256) named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).expect("CA directory");
        let ca = TestCa {
            dir: dir.to_owned(),
            name: name.to_owned(),
        };
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            path(&ca.key()),
            "-out",
            path(&ca.ca_file()),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        ca
    }

    fn key(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.key", self.name))
    }

    /// The CA certificate (PEM), what `mesh.tls.ca_file` names.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.crt", self.name))
    }

    /// A new certificate and key for `component`, valid for client and
    /// server authentication, with `names` as its DNS names, written as
    /// `<dir>/<stem>.crt` and `<dir>/<stem>.key`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        std::fs::create_dir_all(dir).expect("certificate directory");
        let issued = Issued {
            cert_file: dir.join(format!("{stem}.crt")),
            key_file: dir.join(format!("{stem}.key")),
        };
        let csr = dir.join(format!("{stem}.csr"));
        let ext = dir.join(format!("{stem}.ext"));
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n\
                 keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n",
                sans.join(",")
            ),
        )
        .expect("extensions file");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            path(&issued.key_file),
            "-out",
            path(&csr),
            "-subj",
            &format!("/CN={}", names.first().copied().unwrap_or(stem)),
        ]);
        let serial = format!(
            "0x{:x}{:08x}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.ca_file()),
            "-CAkey",
            path(&self.key()),
            "-set_serial",
            &serial,
            "-days",
            "1",
            "-extfile",
            path(&ext),
            "-out",
            path(&issued.cert_file),
        ]);
        issued
    }
}
