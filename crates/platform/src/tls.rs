//! Transport security settings: TLS on the gRPC servers (rustls), optionally requiring client
//! certificates from a CA (mTLS), and librdkafka properties passed through from the environment
//! (`security.protocol`, SASL, CA files) so a service can reach a TLS/SASL Kafka cluster.
//! PostgreSQL TLS needs nothing here: `sslmode`, `sslrootcert`, `sslcert` and `sslkey` are read
//! from `DATABASE_URL` (sqlx is built with rustls).
//!
//! | variable | meaning |
//! |---|---|
//! | `GRPC_TLS_CERT`, `GRPC_TLS_KEY` | PEM certificate chain and private key: the gRPC server serves TLS only (both or neither) |
//! | `GRPC_TLS_CLIENT_CA` | PEM CA bundle: clients must present a certificate it signed (mTLS); needs the two above |
//! | `KAFKA_PROPERTY_<NAME>` | librdkafka property `<name>` (lowercase, `_` → `.`, `__` → `_`), e.g. `KAFKA_PROPERTY_SECURITY_PROTOCOL=SASL_SSL`, `KAFKA_PROPERTY_SASL_MECHANISM=SCRAM-SHA-512`, `KAFKA_PROPERTY_SASL_USERNAME`, `KAFKA_PROPERTY_SASL_PASSWORD`, `KAFKA_PROPERTY_SSL_CA_LOCATION`; properties the platform owns (bootstrap, idempotence, acks, group and commit settings) are refused |

use std::path::PathBuf;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::env_opt;
use crate::error::{Error, Result};

/// TLS settings of a gRPC server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    /// PEM certificate chain (`GRPC_TLS_CERT`).
    pub cert: PathBuf,
    /// PEM private key (`GRPC_TLS_KEY`).
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (`GRPC_TLS_CLIENT_CA`); `None` means
    /// TLS without client certificates.
    pub client_ca: Option<PathBuf>,
}

fn config_error(variable: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        variable: variable.to_owned(),
        reason: reason.into(),
    }
}

impl GrpcTls {
    /// Reads `GRPC_TLS_CERT`, `GRPC_TLS_KEY` and `GRPC_TLS_CLIENT_CA`; `None` when none is set.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_values(
            env_opt("GRPC_TLS_CERT"),
            env_opt("GRPC_TLS_KEY"),
            env_opt("GRPC_TLS_CLIENT_CA"),
        )
    }

    fn from_values(cert: Option<String>, key: Option<String>, client_ca: Option<String>) -> Result<Option<Self>> {
        match (cert, key) {
            (None, None) => match client_ca {
                Some(_) => Err(config_error(
                    "GRPC_TLS_CLIENT_CA",
                    "client certificates need TLS: set GRPC_TLS_CERT and GRPC_TLS_KEY too",
                )),
                None => Ok(None),
            },
            (Some(_), None) => Err(config_error("GRPC_TLS_KEY", "must be set together with GRPC_TLS_CERT")),
            (None, Some(_)) => Err(config_error("GRPC_TLS_CERT", "must be set together with GRPC_TLS_KEY")),
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: cert.into(),
                key: key.into(),
                client_ca: client_ca.map(PathBuf::from),
            })),
        }
    }

    /// The tonic server TLS configuration: the files are read now, so a missing or unreadable
    /// file stops the start-up with the variable named.
    pub fn server_config(&self) -> Result<ServerTlsConfig> {
        let read = |variable: &str, path: &PathBuf| -> Result<Vec<u8>> {
            let bytes = std::fs::read(path)
                .map_err(|error| config_error(variable, format!("cannot read {}: {error}", path.display())))?;
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
                return Err(config_error(variable, format!("{} is not a PEM file", path.display())));
            }
            Ok(bytes)
        };
        let identity = Identity::from_pem(read("GRPC_TLS_CERT", &self.cert)?, read("GRPC_TLS_KEY", &self.key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(read("GRPC_TLS_CLIENT_CA", ca)?))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}

/// Prefix of the environment variables passed through to librdkafka.
pub const KAFKA_PROPERTY_PREFIX: &str = "KAFKA_PROPERTY_";

/// librdkafka properties the platform sets itself; overriding them would break its guarantees
/// (idempotent, acknowledged publishing; commits of finished records only).
const OWNED_KAFKA_PROPERTIES: [&str; 9] = [
    "bootstrap.servers",
    "client.id",
    "enable.idempotence",
    "acks",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
];

/// librdkafka properties from `KAFKA_PROPERTY_*`. `Debug` never shows values of secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(Vec<(String, String)>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_map()
            .entries(self.0.iter().map(|(name, value)| {
                let shown = if is_secret(name) { "<redacted>" } else { value.as_str() };
                (name, shown)
            }))
            .finish()
    }
}

fn is_secret(name: &str) -> bool {
    ["password", "secret", "key.pem", "token"]
        .iter()
        .any(|word| name.contains(word))
}

impl KafkaProperties {
    /// The `KAFKA_PROPERTY_*` variables of the environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut properties = Vec::new();
        for (variable, value) in vars {
            let Some(suffix) = variable.strip_prefix(KAFKA_PROPERTY_PREFIX) else {
                continue;
            };
            if suffix.is_empty() || !suffix.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                return Err(config_error(
                    &variable,
                    "name a librdkafka property, e.g. KAFKA_PROPERTY_SECURITY_PROTOCOL",
                ));
            }
            let name = suffix
                .to_ascii_lowercase()
                .replace("__", "\u{0}")
                .replace('_', ".")
                .replace('\u{0}', "_");
            if OWNED_KAFKA_PROPERTIES.contains(&name.as_str()) {
                return Err(config_error(
                    &variable,
                    format!("{name} is set by the platform and cannot be overridden"),
                ));
            }
            properties.push((name, value));
        }
        properties.sort();
        Ok(Self(properties))
    }

    /// The properties as `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn tls_needs_both_certificate_and_key_and_client_ca_needs_tls() {
        assert_eq!(GrpcTls::from_values(None, None, None).unwrap(), None);
        let only_cert = GrpcTls::from_values(Some("c.pem".into()), None, None).unwrap_err();
        assert!(only_cert.to_string().contains("GRPC_TLS_KEY"), "{only_cert}");
        let only_key = GrpcTls::from_values(None, Some("k.pem".into()), None).unwrap_err();
        assert!(only_key.to_string().contains("GRPC_TLS_CERT"), "{only_key}");
        let ca_alone = GrpcTls::from_values(None, None, Some("ca.pem".into())).unwrap_err();
        assert!(ca_alone.to_string().contains("GRPC_TLS_CLIENT_CA"), "{ca_alone}");
        let mtls = GrpcTls::from_values(Some("c".into()), Some("k".into()), Some("ca".into()))
            .unwrap()
            .unwrap();
        assert_eq!(mtls.client_ca, Some(PathBuf::from("ca")));
    }

    #[test]
    fn an_unreadable_or_non_pem_file_names_its_variable() {
        let tls = GrpcTls {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        };
        let error = tls.server_config().unwrap_err().to_string();
        assert!(
            error.contains("GRPC_TLS_CERT") && error.contains("/nonexistent/cert.pem"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("fintech-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
        let tls = GrpcTls {
            cert: dir.join("cert.pem"),
            ..tls
        };
        let error = tls.server_config().unwrap_err().to_string();
        assert!(
            error.contains("GRPC_TLS_CERT") && error.contains("not a PEM file"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn kafka_properties_map_names_and_hide_secrets() {
        let properties = KafkaProperties::from_vars(vars(&[
            ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_PROPERTY_SASL_PASSWORD", "hunter2"),
            ("KAFKA_PROPERTY_SSL_CA_LOCATION", "/etc/ca.pem"),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        let pairs: Vec<_> = properties.iter().collect();
        assert_eq!(
            pairs,
            [
                ("sasl.password", "hunter2"),
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", "/etc/ca.pem")
            ]
        );
        let shown = format!("{properties:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
        let double = KafkaProperties::from_vars(vars(&[("KAFKA_PROPERTY_SOME__NAME", "1")])).unwrap();
        assert_eq!(double.iter().next(), Some(("some_name", "1")));
    }

    #[test]
    fn kafka_properties_the_platform_owns_are_refused() {
        for variable in [
            "KAFKA_PROPERTY_ENABLE_IDEMPOTENCE",
            "KAFKA_PROPERTY_ACKS",
            "KAFKA_PROPERTY_GROUP_ID",
        ] {
            let error = KafkaProperties::from_vars(vars(&[(variable, "x")]))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(variable) && error.contains("cannot be overridden"),
                "{error}"
            );
        }
        let error = KafkaProperties::from_vars(vars(&[("KAFKA_PROPERTY_", "x")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("KAFKA_PROPERTY_"), "{error}");
    }
}
