//! The configuration file, compiled, and reloaded when it changes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use policy_executor::{ConfigError, Engine, Registry};

/// Why a configuration file could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Io(PathBuf, std::io::Error),
    /// The file is not a valid configuration.
    Invalid(PathBuf, ConfigError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            Self::Invalid(path, e) => write!(f, "{}: {e}", path.display()),
        }
    }
}

impl std::error::Error for LoadError {}

/// What a reload check did.
#[derive(Debug)]
pub enum Reload {
    /// The file has not changed since the last check.
    Unchanged,
    /// The new configuration is serving.
    Applied,
    /// The new file was refused; the previous configuration keeps serving.
    Rejected(LoadError),
}

/// The serving configuration and where it comes from.
pub struct ConfigStore {
    path: PathBuf,
    registry: Registry,
    current: RwLock<Arc<Engine>>,
    /// The contents last looked at, applied or not, so a bad file is
    /// reported once rather than on every check.
    last_seen: Mutex<Vec<u8>>,
}

impl ConfigStore {
    /// Loads and compiles `path`.
    pub fn load(path: &Path, registry: Registry) -> Result<Self, LoadError> {
        let text = std::fs::read(path).map_err(|e| LoadError::Io(path.to_owned(), e))?;
        let engine = Engine::from_config(&text, &registry)
            .map_err(|e| LoadError::Invalid(path.to_owned(), e))?;
        Ok(Self {
            path: path.to_owned(),
            registry,
            current: RwLock::new(Arc::new(engine)),
            last_seen: Mutex::new(text),
        })
    }

    /// The configuration serving now.
    pub fn current(&self) -> Arc<Engine> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&current)
    }

    /// Re-reads the file and swaps in its configuration if it changed and
    /// is valid.
    pub fn reload_if_changed(&self) -> Reload {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) => return Reload::Rejected(LoadError::Io(self.path.clone(), e)),
        };
        {
            let mut last = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            if *last == text {
                return Reload::Unchanged;
            }
            last.clone_from(&text);
        }
        match Engine::from_config(&text, &self.registry) {
            Ok(mut engine) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                engine.keep_remote_of(&current);
                *current = Arc::new(engine);
                Reload::Applied
            }
            Err(e) => Reload::Rejected(LoadError::Invalid(self.path.clone(), e)),
        }
    }
}
