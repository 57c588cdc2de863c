//! The authorization rules of the contract: every RPC declares the scope it requires as the
//! `fintech.common.v1.authorization` method option (`proto/fintech/common/v1/authorization.proto`).
//! [`Policy::for_services`] reads them back from the encoded descriptor set the services embed
//! for reflection (prost-types would drop the extension; prost-reflect keeps it) and refuses a
//! service with an RPC that declares none.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, DynamicMessage, Value};

/// Full name of the method option that carries the rule.
pub const AUTHORIZATION_OPTION: &str = "fintech.common.v1.authorization";

/// What one RPC requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The scope the token must carry.
    pub scope: String,
    /// Whether a customer token may call it (limited by the service to its own data).
    pub customers: bool,
}

/// Why the rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The descriptor set does not decode.
    #[error("the descriptor set does not decode: {0}")]
    Descriptors(String),
    /// The option is not defined in the descriptor set.
    #[error("the descriptor set does not define the {AUTHORIZATION_OPTION} option")]
    NoOption,
    /// A served service is not in the descriptor set.
    #[error("service {0} is not in the descriptor set")]
    UnknownService(String),
    /// An RPC declares no rule, or an empty scope.
    #[error("rpc /{service}/{method} declares no {AUTHORIZATION_OPTION} scope")]
    Undeclared {
        /// The service.
        service: String,
        /// The method.
        method: String,
    },
}

/// The rule of every method of the served services, by gRPC path (`/pkg.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: HashMap<String, Rule>,
}

impl Policy {
    /// The rules of `services` (full names) from the encoded `FileDescriptorSet` `descriptors`;
    /// an error when a method has none.
    pub fn for_services(descriptors: &[u8], services: &[&str]) -> Result<Self, PolicyError> {
        let all = every_rule(descriptors)?;
        let mut rules = HashMap::new();
        for service in services {
            let methods = all
                .get(*service)
                .ok_or_else(|| PolicyError::UnknownService((*service).to_owned()))?;
            for (method, rule) in methods {
                let rule = rule.clone().ok_or_else(|| PolicyError::Undeclared {
                    service: (*service).to_owned(),
                    method: method.clone(),
                })?;
                rules.insert(format!("/{service}/{method}"), rule);
            }
        }
        Ok(Self { rules })
    }

    /// The rule of the method at `path`, `None` for a method no served service has.
    pub fn rule(&self, path: &str) -> Option<&Rule> {
        self.rules.get(path)
    }

    /// Every path and its rule.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &Rule)> {
        self.rules.iter().map(|(path, rule)| (path.as_str(), rule))
    }
}

/// Each method of a service and its rule (`None`: undeclared).
pub type MethodRules = Vec<(String, Option<Rule>)>;

/// Every service of `descriptors`, by full name, with its methods' rules.
pub fn every_rule(descriptors: &[u8]) -> Result<HashMap<String, MethodRules>, PolicyError> {
    let pool = DescriptorPool::decode(descriptors).map_err(|error| PolicyError::Descriptors(error.to_string()))?;
    let option = pool
        .get_extension_by_name(AUTHORIZATION_OPTION)
        .ok_or(PolicyError::NoOption)?;
    let mut services = HashMap::new();
    for service in pool.services() {
        let methods = service
            .methods()
            .map(|method| {
                let options = method.options();
                let rule = options
                    .has_extension(&option)
                    .then(|| options.get_extension(&option))
                    .and_then(|value| match value.as_ref() {
                        Value::Message(message) => rule_of(message),
                        _ => None,
                    });
                (method.name().to_owned(), rule)
            })
            .collect();
        services.insert(service.full_name().to_owned(), methods);
    }
    Ok(services)
}

fn rule_of(message: &DynamicMessage) -> Option<Rule> {
    let scope = message.get_field_by_name("scope")?.as_str()?.trim().to_owned();
    let customers = message
        .get_field_by_name("customers")
        .and_then(|value| value.as_bool())
        .unwrap_or(false);
    (!scope.is_empty() && !scope.contains(char::is_whitespace)).then_some(Rule { scope, customers })
}
