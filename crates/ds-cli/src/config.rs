//! Where the CLI finds the gateway and its API key: flags, then `DS_*` variables (clap
//! merges those two), then the config file `ds login` writes (`$DS_CONFIG`, else
//! `~/.config/ds/config.yaml`), readable by its owner only.

use super::client::{self, normalize_url};
use super::{CliError, GlobalArgs, LoginArgs};
use ds_transport::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The config file's contents.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Gateway URL.
    pub gateway: String,
    /// Admin API key for that gateway.
    pub api_key: String,
    /// CA bundle to trust for that gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("gateway", &self.gateway)
            .field("api_key", &"***")
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// `$DS_CONFIG`, else `~/.config/ds/config.yaml`; `None` without a home directory.
pub fn default_config_path() -> Option<PathBuf> {
    match std::env::var_os("DS_CONFIG") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => dirs::home_dir().map(|home| home.join(".config").join("ds").join("config.yaml")),
    }
}

fn config_error(path: &Path, reason: impl std::fmt::Display) -> CliError {
    CliError::Config {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads the config file; `Ok(None)` when it does not exist.
///
/// # Errors
/// The file exists but cannot be read or parsed.
pub fn load(path: &Path) -> Result<Option<Config>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(config_error(path, e)),
    };
    serde_saphyr::from_str(&text).map(Some).map_err(|e| {
        config_error(
            path,
            format!("not a valid config ({e}); run `ds login` again"),
        )
    })
}

/// Writes the config file readable and writable by its owner only (0600), replacing
/// any previous one atomically so a crash never leaves a half-written key.
///
/// # Errors
/// The directory or file cannot be written.
pub fn save(path: &Path, config: &Config) -> Result<(), CliError> {
    let text = serde_saphyr::to_string(config).map_err(|e| config_error(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|e| config_error(path, e))?;
    }
    let tmp = path.with_extension("yaml.tmp");
    write_private(&tmp, text.as_bytes()).map_err(|e| config_error(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| config_error(path, e))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only on creation: tighten a leftover file too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Everything needed to dial the gateway.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Normalised gateway URL (`https://…` when no scheme was given).
    pub url: String,
    /// The admin API key.
    pub api_key: SecretString,
    /// Extra CA to trust besides the system roots.
    pub ca_cert: Option<PathBuf>,
}

/// Combines flags and environment (already merged by clap) with the config file.
///
/// The file's key is used only for the gateway the file names: a `--gateway` pointing
/// elsewhere never receives the saved key.
///
/// # Errors
/// No gateway or no key anywhere, or an unreadable config file.
pub fn resolve(global: &GlobalArgs) -> Result<Connection, CliError> {
    let flag_gateway = global.gateway.as_deref().filter(|g| !g.trim().is_empty());
    let flag_key = global
        .api_key
        .clone()
        .filter(|k| !k.expose_secret().is_empty());
    let file = if flag_gateway.is_some() && flag_key.is_some() {
        None
    } else {
        match default_config_path() {
            Some(path) => load(&path)?,
            None => None,
        }
    };
    let url = match (flag_gateway, &file) {
        (Some(g), _) => normalize_url(g)?,
        (None, Some(cfg)) if !cfg.gateway.is_empty() => normalize_url(&cfg.gateway)?,
        _ => return Err(CliError::NoGateway),
    };
    let file = file.filter(|cfg| normalize_url(&cfg.gateway).is_ok_and(|g| g == url));
    let api_key = match (flag_key, &file) {
        (Some(key), _) => key,
        (None, Some(cfg)) if !cfg.api_key.is_empty() => SecretString::from(cfg.api_key.clone()),
        _ => return Err(CliError::NoApiKey),
    };
    let ca_cert = global
        .ca_cert
        .clone()
        .or_else(|| file.and_then(|cfg| cfg.ca_cert));
    Ok(Connection {
        url,
        api_key,
        ca_cert,
    })
}

/// `ds login`.
pub async fn login(args: LoginArgs) -> Result<(), CliError> {
    let path = default_config_path().ok_or_else(|| CliError::Config {
        path: "~/.config/ds/config.yaml".into(),
        reason: "no home directory: set DS_CONFIG to the config file's path".into(),
    })?;
    // `--api-key -` reads the key from stdin, keeping it out of the process list.
    let api_key = if args.api_key.expose_secret() == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::BadFlag {
                flag: "--api-key".into(),
                value: "-".into(),
                reason: format!("reading the key from stdin: {e}"),
            })?;
        SecretString::from(line.trim())
    } else {
        args.api_key.clone()
    };
    if api_key.expose_secret().is_empty() {
        return Err(CliError::NoApiKey);
    }
    // Store an absolute CA path: the file is read from other working directories later.
    let ca_cert = match &args.ca_cert {
        Some(p) => Some(
            std::fs::canonicalize(p).map_err(|cause| CliError::ReadCaCert {
                path: p.display().to_string(),
                cause,
            })?,
        ),
        None => None,
    };
    let connection = Connection {
        url: normalize_url(&args.gateway)?,
        api_key,
        ca_cert,
    };
    if !args.no_verify {
        let mut control = client::connect(&connection).await?;
        control
            .list_deployers(client::request(ds_core::proto::ListDeployersRequest {}))
            .await
            .map_err(|status| client::status_error(status, &connection.url))?;
    }
    let config = Config {
        gateway: connection.url.clone(),
        api_key: connection.api_key.expose_secret().to_string(),
        ca_cert: connection.ca_cert,
    };
    save(&path, &config)?;
    println!(
        "Logged in to {}; settings saved to {}",
        connection.url,
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_config_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("config.yaml");
        let config = Config {
            gateway: "https://gw.example.com:8800".into(),
            api_key: "k3y".into(),
            ca_cert: Some("/etc/ds/ca.pem".into()),
        };
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), Some(config.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Saving again over an existing file keeps it private.
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), Some(config));
    }

    #[test]
    fn a_missing_config_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("none.yaml")).unwrap(), None);
    }

    #[test]
    fn a_broken_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "gateway: [unclosed").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("config.yaml"), "{err}");
        assert!(err.contains("ds login"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_key() {
        let config = Config {
            gateway: "https://gw".into(),
            api_key: "super-secret".into(),
            ca_cert: None,
        };
        assert!(!format!("{config:?}").contains("super-secret"));
        assert!(!format!("{:?}", SecretString::from("super-secret")).contains("super-secret"));
    }
}
