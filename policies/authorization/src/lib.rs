//! `authorization`: allows or denies requests with CEL rules, in the terms
//! of Envoy RBAC and agentgateway users.
//!
//! ```yaml
//! - name: authorization
//!   config:
//!     rules:
//!       - name: team-a                       # optional, for the decision log
//!         allow: 'source.identity.serviceAccount == "team-a"'
//!       - deny: 'request.path.startsWith("/admin")'
//!       - require: 'connection.mtls'
//!     default: deny                          # required: allow | deny
//!     denial: { status: 403, body: "access denied\n" }   # the default
//! ```
//!
//! # Decision
//!
//! 1. Any `deny` rule that is true denies: deny beats allow.
//! 2. Any `require` rule that is not true denies.
//! 3. Else the first `allow` rule that is true allows.
//! 4. Else `default` decides. It has no default value: whether an unmatched
//!    request passes is too important to leave implicit.
//!
//! # Errors fail closed
//!
//! A rule that cannot be evaluated (an attribute the request lacks, such as
//! `source.identity` without a client certificate) counts against the
//! request: a failing `deny` or `require` rule denies, and a failing `allow`
//! rule does not allow. Every decision is logged at debug level with the
//! route, the rule, the outcome and the caller.
//!
//! # Bodies
//!
//! A rule may read the request body (`request.json.model == "small"`).
//! Then every rule is judged once the whole body has arrived, before the
//! upstream sees any of the request; a body that is not JSON makes
//! `request.json` unreadable, which fails closed as above.

use std::collections::BTreeMap;

use policy_executor::{
    check_reply_status, parse_header_map, parse_params, Action, AttributeSet, Context, Expression,
    LocalReply, ParamError, Phase, Phases, Policy, PolicyFactory,
};
use serde::Deserialize;

/// The policy's registration.
pub const FACTORY: PolicyFactory = PolicyFactory {
    name: "authorization",
    version: "0.1.0",
    build,
};

policy_executor::policy_parameters!(Params);

/// The parameters of `authorization`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Params {
    /// The rules: any `deny` or failed `require` refuses; else an `allow`
    /// that holds lets the request through; else `default`.
    rules: Vec<RawRule>,
    /// What happens when no rule decides.
    default: Default,
    /// The reply to a refused request (default 403).
    #[serde(default)]
    denial: Option<RawDenial>,
}

/// A rule: exactly one of `allow`, `deny` and `require`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "rule"))]
struct RawRule {
    /// A label for decision logs.
    name: Option<String>,
    /// CEL: allow when true.
    allow: Option<String>,
    /// CEL: deny when true (beats allow).
    deny: Option<String>,
    /// CEL: deny unless true.
    require: Option<String>,
}

/// The verdict when no rule decides.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", schemars(rename = "default"))]
enum Default {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
}

/// The reply to a refused request.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(rename = "denial"))]
struct RawDenial {
    /// The status, 200 to 599 (default 403).
    #[serde(default = "forbidden")]
    #[cfg_attr(feature = "schema", schemars(range(min = 200, max = 599)))]
    status: u16,
    /// The body (default `access denied`).
    #[serde(default = "denied")]
    body: String,
    /// Headers of the reply.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn forbidden() -> u16 {
    403
}

fn denied() -> String {
    "access denied\n".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allow,
    Deny,
    Require,
}

struct Rule {
    label: String,
    kind: Kind,
    condition: Expression,
}

struct Authorization {
    /// Some rule reads the request body: the rules are judged once it has
    /// arrived.
    on_body: bool,
    rules: Vec<Rule>,
    default: Default,
    denial: LocalReply,
    attributes: AttributeSet,
}

fn build(config: &serde_json::Value) -> Result<Box<dyn Policy>, ParamError> {
    let params: Params = parse_params(config)?;
    let mut rules = Vec::with_capacity(params.rules.len());
    for (i, raw) in params.rules.into_iter().enumerate() {
        let field = format!("rules[{i}]");
        let (kind, source) = match (raw.allow, raw.deny, raw.require) {
            (Some(e), None, None) => (Kind::Allow, e),
            (None, Some(e), None) => (Kind::Deny, e),
            (None, None, Some(e)) => (Kind::Require, e),
            _ => {
                return Err(ParamError::at(
                    field,
                    "a rule has exactly one of allow, deny or require",
                ))
            }
        };
        let key = match kind {
            Kind::Allow => "allow",
            Kind::Deny => "deny",
            Kind::Require => "require",
        };
        let condition = Expression::compile(&source, Phase::RequestBody)
            .map_err(|e| ParamError::at(format!("{field}.{key}"), e))?;
        rules.push(Rule {
            label: raw.name.unwrap_or(field),
            kind,
            condition,
        });
    }
    let denial = match params.denial {
        Some(raw) => LocalReply {
            status: check_reply_status("denial.status", raw.status)?,
            headers: parse_header_map("denial.headers", &raw.headers)?
                .into_iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_str().to_owned()))
                .collect(),
            body: raw.body.into_bytes(),
        },
        None => LocalReply::text(forbidden(), denied()),
    };
    let attributes = rules
        .iter()
        .fold(AttributeSet::NONE, |all, r| all | r.condition.attributes());
    // One rule on the body makes all of them wait for it: the verdict
    // weighs every rule together.
    let on_body = rules.iter().any(|r| r.condition.reads_body());
    Ok(Box::new(Authorization {
        on_body,
        rules,
        default: params.default,
        denial,
        attributes,
    }))
}

/// Which rule decided, and how.
struct Verdict<'a> {
    allow: bool,
    why: &'a str,
}

impl Authorization {
    fn decide(&self, cx: &Context) -> Verdict<'_> {
        let holds = |rule: &Rule| match rule.condition.evaluate_bool(cx) {
            Ok(holds) => Some(holds),
            Err(error) => {
                log::debug!(
                    "authorization: rule {} of route {:?} failed: {error}",
                    rule.label,
                    cx.route().chain
                );
                None
            }
        };
        // Deny and require rules first, all of them: deny beats allow.
        for rule in &self.rules {
            let denies = match rule.kind {
                Kind::Deny => holds(rule) != Some(false),
                Kind::Require => holds(rule) != Some(true),
                Kind::Allow => false,
            };
            if denies {
                return Verdict {
                    allow: false,
                    why: &rule.label,
                };
            }
        }
        self.rules
            .iter()
            .filter(|r| r.kind == Kind::Allow)
            .find(|r| holds(r) == Some(true))
            .map_or(
                Verdict {
                    allow: self.default == Default::Allow,
                    why: "default",
                },
                |rule| Verdict {
                    allow: true,
                    why: &rule.label,
                },
            )
    }
}

impl Policy for Authorization {
    fn rules(&self) -> Vec<String> {
        let rules = self.rules.iter().map(|r| r.label.clone());
        rules.chain(["default".to_owned()]).collect()
    }

    fn phases(&self) -> Phases {
        if self.on_body {
            Phases::REQUEST_BODY
        } else {
            Phases::REQUEST_HEADERS
        }
    }

    fn attributes(&self) -> AttributeSet {
        self.attributes
    }

    fn on_request_headers(&self, cx: &mut Context) -> Action {
        self.judge(cx)
    }

    fn on_request_body(&self, cx: &mut Context, _body: &[u8]) -> Action {
        self.judge(cx)
    }
}

impl Authorization {
    fn judge(&self, cx: &mut Context) -> Action {
        let verdict = self.decide(cx);
        cx.explain_rule(
            verdict.why,
            if verdict.allow { "allowed" } else { "denied" },
        );
        log::debug!(
            "authorization: route {:?} {} by {} for caller {}",
            cx.route().chain,
            if verdict.allow { "allowed" } else { "denied" },
            verdict.why,
            cx.caller()
        );
        if verdict.allow {
            Action::Continue
        } else {
            Action::Respond(self.denial.clone())
        }
    }
}

#[cfg(test)]
mod tests;
