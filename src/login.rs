//! `weft login` and `weft logout`: registry credentials on the operator's
//! machine, and the file they live in.
//!
//! The file is weft's own (Docker keeps its in `~/.docker/config.json`):
//! `$WEFT_CONFIG`, else `$XDG_CONFIG_HOME/weft/config.json`, else
//! `~/.config/weft/config.json`; mode 0600 in a 0700 directory, in
//! Docker's shape (`{"auths": {"REGISTRY": {"auth": base64(user:password)}}}`).
//! base64 is an encoding, not a protection: the file's mode is. What a
//! cluster keeps of them is sealed (SECURITY.md, "Registry credentials").

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use weft_worker::image::credential::{Credential, MAX_PASSWORD, MAX_USERNAME};
use weft_worker::image::pull::check_registry;
use zeroize::Zeroizing;

/// Largest credentials file read (a few hundred registries).
const MAX_FILE: u64 = 1 << 20;
/// Most registries kept in the file.
const MAX_REGISTRIES: usize = 256;
/// The registry `weft login` with no REGISTRY logs in to, and that
/// `busybox`-style names are pulled from.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The file's contents, in Docker's shape.
#[derive(Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    /// base64 of `user:password`.
    auth: String,
}

impl Drop for Entry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.auth);
    }
}

/// Where the credentials file is: `$WEFT_CONFIG`, else under
/// `$XDG_CONFIG_HOME`, else under `~/.config`.
pub fn file_path() -> anyhow::Result<PathBuf> {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("WEFT_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let dir = match (var("XDG_CONFIG_HOME"), var("HOME")) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => PathBuf::from(h).join(".config"),
        (None, None) => bail!("neither WEFT_CONFIG, XDG_CONFIG_HOME nor HOME is set"),
    };
    Ok(dir.join("weft").join("config.json"))
}

fn load(path: &Path) -> anyhow::Result<File> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(File::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        bail!("{} is over {MAX_FILE} bytes", path.display());
    }
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a weft credentials file", path.display()))
}

fn save(path: &Path, file: &File) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = Zeroizing::new(serde_json::to_vec_pretty(file).expect("credentials serialise"));
    weft_overlay::durable::write_atomic(path, &json, 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    // write_atomic sets the mode; checked, as the file's mode is its only
    // protection.
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        bail!("{} has mode {mode:o}, not 600", path.display());
    }
    Ok(())
}

fn encode(c: &Credential) -> String {
    let plain = Zeroizing::new(format!("{}:{}", c.username(), c.password()));
    B64.encode(plain.as_bytes())
}

fn decode(registry: &str, auth: &str) -> anyhow::Result<Credential> {
    let bad = || {
        anyhow::anyhow!(
            "the stored credentials for {registry} are damaged: run `weft login {registry}` again"
        )
    };
    let bytes = Zeroizing::new(B64.decode(auth).map_err(|_| bad())?);
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Credential::new(user, password).map_err(|_| bad())
}

/// The stored credentials for `registry`, if any.
pub fn lookup(path: &Path, registry: &str) -> anyhow::Result<Option<Credential>> {
    let file = load(path)?;
    file.auths
        .get(registry)
        .map(|e| decode(registry, &e.auth))
        .transpose()
}

/// Stores `credential` for `registry` (replacing what was there).
pub fn store(path: &Path, registry: &str, credential: &Credential) -> anyhow::Result<()> {
    check_registry(registry)?;
    let mut file = load(path)?;
    if !file.auths.contains_key(registry) && file.auths.len() >= MAX_REGISTRIES {
        bail!(
            "{} already holds {MAX_REGISTRIES} registries' credentials: `weft logout` some",
            path.display()
        );
    }
    file.auths.insert(
        registry.to_owned(),
        Entry {
            auth: encode(credential),
        },
    );
    save(path, &file)
}

/// Removes `registry`'s credentials; whether there were any.
pub fn remove(path: &Path, registry: &str) -> anyhow::Result<bool> {
    let mut file = load(path)?;
    if file.auths.remove(registry).is_none() {
        return Ok(false);
    }
    save(path, &file)?;
    Ok(true)
}

/// What the daemon gets for a pull from `registry`: the stored
/// credentials, if any (none when there is no credentials file).
pub fn wire_for(registry: &str) -> anyhow::Result<Option<weft_proto::v1::RegistryCredential>> {
    let Ok(path) = file_path() else {
        return Ok(None);
    };
    Ok(
        lookup(&path, registry)?.map(|c| weft_proto::v1::RegistryCredential {
            registry: registry.to_owned(),
            username: c.username().to_owned(),
            password: c.password().to_owned(),
        }),
    )
}

/// `--with-registry-auth`: the stored credentials for `image`'s registry;
/// an error saying to log in when there are none.
pub fn for_service(image: &str) -> anyhow::Result<weft_proto::v1::RegistryCredential> {
    let registry = weft_proto::credential::registry_of(image);
    wire_for(registry)?.ok_or_else(|| {
        anyhow::anyhow!(
            "--with-registry-auth: no credentials stored for registry {registry}: run `weft login {registry}` first"
        )
    })
}

/// The registry a command names (`docker.io` when none), checked.
pub fn registry_arg(registry: Option<String>) -> anyhow::Result<String> {
    let r = registry.unwrap_or_else(|| DEFAULT_REGISTRY.to_owned());
    // Docker's names for Docker Hub.
    let r = match r.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "https://index.docker.io/v1/" => {
            DEFAULT_REGISTRY.to_owned()
        }
        _ => r,
    };
    // The shape first (its message is about registry names), then the
    // reference parser's own check.
    weft_proto::credential::check_registry(&r)?;
    check_registry(&r)?;
    Ok(r)
}

/// `weft login [-u USER] [--password-stdin] [--insecure] [REGISTRY]`:
/// checks the credentials against the registry, then stores them. A
/// refused login stores nothing.
pub async fn login(
    registry: Option<String>,
    username: Option<String>,
    password_stdin: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    let registry = registry_arg(registry)?;
    let username = username.unwrap_or_default();
    if username.len() > MAX_USERNAME {
        bail!("the user name is over {MAX_USERNAME} bytes");
    }
    let password = if password_stdin {
        crate::unlock::read_secret(None, MAX_PASSWORD)?
    } else {
        crate::unlock::read_secret(Some("Password: "), MAX_PASSWORD)?
    };
    let password = Zeroizing::new(password.trim_end_matches(['\n', '\r']).to_owned());
    let credential = Credential::new(&username, &password)?;
    let path = file_path()?;
    weft_worker::image::login::check(&registry, &credential, &[], insecure).await?;
    store(&path, &registry, &credential)?;
    println!(
        "Login Succeeded ({registry}; credentials in {})",
        path.display()
    );
    Ok(())
}

/// `weft logout [REGISTRY]`.
pub fn logout(registry: Option<String>) -> anyhow::Result<()> {
    let registry = registry_arg(registry)?;
    let path = file_path()?;
    if remove(&path, &registry)? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(u: &str, p: &str) -> Credential {
        Credential::new(u, p).unwrap()
    }

    #[test]
    fn store_lookup_remove_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/weft/config.json");
        assert!(lookup(&path, "r.example:5000").unwrap().is_none());
        store(&path, "r.example:5000", &cred("alice", "pa:ss word")).unwrap();
        store(&path, "docker.io", &cred("bob", "x")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let got = lookup(&path, "r.example:5000").unwrap().unwrap();
        assert_eq!((got.username(), got.password()), ("alice", "pa:ss word"));
        // Docker's shape: base64 of user:password.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&B64.encode("alice:pa:ss word")), "{text}");
        assert!(remove(&path, "r.example:5000").unwrap());
        assert!(!remove(&path, "r.example:5000").unwrap());
        assert!(lookup(&path, "r.example:5000").unwrap().is_none());
        assert!(lookup(&path, "docker.io").unwrap().is_some());
    }

    #[test]
    fn bad_files_and_names_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "not json").unwrap();
        assert!(lookup(&path, "docker.io").is_err());
        assert!(store(&path, "docker.io", &cred("a", "b")).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not json");
        std::fs::write(&path, r#"{"auths":{"docker.io":{"auth":"!!"}}}"#).unwrap();
        let e = lookup(&path, "docker.io").unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        std::fs::write(&path, vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(
            lookup(&path, "docker.io")
                .unwrap_err()
                .to_string()
                .contains("over")
        );
        let fresh = dir.path().join("fresh.json");
        for bad in ["", "https://r.example", "r.example/path", "a b"] {
            assert!(store(&fresh, bad, &cred("a", "b")).is_err(), "{bad:?}");
            assert!(registry_arg(Some(bad.to_owned())).is_err(), "{bad:?}");
        }
        assert!(!fresh.exists());
        assert_eq!(registry_arg(None).unwrap(), "docker.io");
        assert_eq!(
            registry_arg(Some("index.docker.io".into())).unwrap(),
            "docker.io"
        );
    }

    #[test]
    fn the_file_holds_a_bounded_number_of_registries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for i in 0..MAX_REGISTRIES {
            store(&path, &format!("r{i}.example"), &cred("a", "b")).unwrap();
        }
        assert!(store(&path, "one-more.example", &cred("a", "b")).is_err());
        // Replacing one already there is fine.
        store(&path, "r0.example", &cred("a", "c")).unwrap();
    }
}
