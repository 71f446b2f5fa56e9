//! Configuration helpers every service uses: errors that name their variable, secrets
//! given directly or as `_FILE` paths, and reporting every problem at once.

/// A configuration problem, naming the variable to fix.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A problem with `var`.
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// A secret from the configuration: its `Debug` is redacted, so a configuration struct
/// logged or printed whole (`{:?}`) never shows a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// A secret given directly (`NAME`) or as a file path (`NAME_FILE`, for Kubernetes Secrets
/// mounted as files); the file's trailing newline is dropped.
pub fn secret(
    var: &'static str,
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            var,
            "set either the variable or its _FILE form, not both",
        )),
        (Some(v), None) => Ok(Some(v.to_owned())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|e| ConfigError::new(var, format!("read {}: {e}", path.display()))),
        (None, None) => Ok(None),
    }
}

/// Fails with every problem at once, one per line, so an operator fixes them in one go.
pub fn report(problems: Vec<ConfigError>) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    Err(format!("invalid configuration:\n{}", lines.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_10_secrets_print_redacted() {
        let s: Secret = "xoxb-very-secret".parse().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(redacted)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(redacted))");
        assert_eq!(s.expose(), "xoxb-very-secret");
    }

    #[test]
    fn secrets_come_from_value_or_file_not_both() {
        let dir = std::env::temp_dir().join(format!("tars-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        assert_eq!(secret("X", None, Some(&dir)).unwrap().unwrap(), "s3cret");
        assert_eq!(secret("X", Some("v"), None).unwrap().unwrap(), "v");
        assert!(secret("X", Some("v"), Some(&dir)).is_err());
        let _ = std::fs::remove_file(dir);
    }
}
