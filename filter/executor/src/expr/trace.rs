//! What `policy-tool explain` shows of an expression: its value, and the
//! value of each of its parts, evaluated with the interpreter in the same
//! binding. Only requests a host asks to trace pay for it
//! ([`crate::Exchange::trace`]): for every other request the cost is one
//! `None` check per evaluation.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use cel::Value;

/// What a traced request recorded, in order, each with the policy
/// (`name@version`) that was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Traced {
    /// An expression was evaluated.
    Evaluation {
        /// The running policy.
        by: String,
        /// The expression as written.
        source: String,
        /// Its value, or the error.
        value: String,
        /// Its parts, outermost first, each written out and with its value.
        parts: Vec<(String, String)>,
    },
    /// A policy's rule decided ([`crate::Context::explain_rule`]).
    Rule {
        /// The running policy.
        by: String,
        /// The rule, as [`crate::Policy::rules`] names it.
        rule: String,
        /// What it decided (`allowed`, `denied`).
        outcome: String,
    },
}

impl Traced {
    /// The policy that was running.
    pub fn by(&self) -> &str {
        match self {
            Self::Evaluation { by, .. } | Self::Rule { by, .. } => by,
        }
    }
}

/// The evaluations of a traced request, recorded as the chain runs.
#[derive(Debug, Default)]
pub(crate) struct Tracing {
    /// The policy running now.
    running: String,
    traced: std::sync::Mutex<Vec<Traced>>,
}

impl Tracing {
    pub(crate) fn set_running(&mut self, label: &str) {
        label.clone_into(&mut self.running);
    }

    pub(crate) fn record(&self, source: &str, value: String, parts: Vec<(String, String)>) {
        self.push(Traced::Evaluation {
            by: self.running.clone(),
            source: source.to_owned(),
            value,
            parts,
        });
    }

    pub(crate) fn rule(&self, rule: &str, outcome: &str) {
        self.push(Traced::Rule {
            by: self.running.clone(),
            rule: rule.to_owned(),
            outcome: outcome.to_owned(),
        });
    }

    fn push(&self, traced: Traced) {
        // A poisoned lock only means a panic elsewhere; the list is intact.
        let mut all = self.traced.lock().unwrap_or_else(|p| p.into_inner());
        all.push(traced);
    }

    pub(crate) fn take(&mut self) -> Vec<Traced> {
        std::mem::take(self.traced.get_mut().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Each part of `root` (not `root` itself, nor literals and comprehension
/// internals) written out, with its value in `activation`.
pub(super) fn parts(root: &IdedExpr, activation: &cel::Context) -> Vec<(String, String)> {
    let mut found = Vec::new();
    collect(root, true, activation, &mut found);
    found
}

fn collect(
    expr: &IdedExpr,
    is_root: bool,
    activation: &cel::Context,
    found: &mut Vec<(String, String)>,
) {
    let children: Vec<&IdedExpr> = match &expr.expr {
        Expr::Call(call) => call
            .target
            .iter()
            .map(AsRef::as_ref)
            .chain(&call.args)
            .collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::List(list) => list.elements.iter().collect(),
        // Literals say what they are; a comprehension's parts are bound to
        // its iteration variables, which only it has.
        _ => Vec::new(),
    };
    // Literals say what they are, and a variable alone (`request`) says
    // nothing the fields read from it do not.
    let worth_showing = !matches!(
        &expr.expr,
        Expr::Literal(_) | Expr::List(_) | Expr::Ident(_)
    );
    if !is_root && worth_showing {
        if let Some(text) = unparse(expr) {
            if !found.iter().any(|(seen, _)| *seen == text) {
                found.push((text, render(Value::resolve(expr, activation))));
            }
        }
    }
    for child in children {
        collect(child, false, activation, found);
    }
}

/// A value as `explain` prints it.
pub(super) fn render(value: Result<Value, cel::ExecutionError>) -> String {
    match value {
        Ok(Value::String(s)) => format!("{:?}", s.as_str()),
        Ok(Value::Int(i)) => i.to_string(),
        Ok(Value::UInt(u)) => format!("{u}u"),
        Ok(Value::Float(f)) => f.to_string(),
        Ok(Value::Bool(b)) => b.to_string(),
        Ok(Value::Null) => "null".into(),
        Ok(Value::List(items)) => format!("a list of {}", items.len()),
        Ok(other) => format!("a {}", other.type_of()),
        Err(e) => format!("error: {e}"),
    }
}

/// `expr` written as an operand: in parentheses if it is itself an
/// operation, so `(a || b) && c` keeps its reading.
fn operand(expr: &IdedExpr) -> Option<String> {
    let text = unparse(expr)?;
    let loose = [
        operators::LOGICAL_AND,
        operators::LOGICAL_OR,
        operators::CONDITIONAL,
    ];
    let operation = matches!(&expr.expr, Expr::Call(call)
        if call.target.is_none() && loose.contains(&call.func_name.as_str()));
    Some(if operation { format!("({text})") } else { text })
}

/// The CEL text of `expr`, for the forms expressions here use; `None` for
/// one it does not write (a comprehension).
fn unparse(expr: &IdedExpr) -> Option<String> {
    Some(match &expr.expr {
        Expr::Ident(name) => name.clone(),
        Expr::Literal(literal) => match literal {
            LiteralValue::String(s) => format!("{:?}", s.inner()),
            LiteralValue::Int(i) => i.inner().to_string(),
            LiteralValue::UInt(u) => format!("{}u", u.inner()),
            LiteralValue::Double(d) => d.inner().to_string(),
            LiteralValue::Boolean(b) => b.inner().to_string(),
            LiteralValue::Null => "null".into(),
            LiteralValue::Bytes(_) => return None,
        },
        Expr::Select(select) if select.test => {
            format!("has({}.{})", operand(&select.operand)?, select.field)
        }
        Expr::Select(select) => format!("{}.{}", operand(&select.operand)?, select.field),
        Expr::List(list) => {
            let items: Option<Vec<String>> = list.elements.iter().map(unparse).collect();
            format!("[{}]", items?.join(", "))
        }
        Expr::Call(call) => {
            let args: Option<Vec<String>> = call.args.iter().map(operand).collect();
            let args = args?;
            let binary = |op: &str| Some(format!("{} {op} {}", args.first()?, args.get(1)?));
            match (call.func_name.as_str(), &call.target) {
                (operators::LOGICAL_AND, None) => binary("&&")?,
                (operators::LOGICAL_OR, None) => binary("||")?,
                (operators::EQUALS, None) => binary("==")?,
                (operators::NOT_EQUALS, None) => binary("!=")?,
                (operators::LESS, None) => binary("<")?,
                (operators::LESS_EQUALS, None) => binary("<=")?,
                (operators::GREATER, None) => binary(">")?,
                (operators::GREATER_EQUALS, None) => binary(">=")?,
                (operators::ADD, None) => binary("+")?,
                (operators::SUBSTRACT, None) => binary("-")?,
                (operators::MULTIPLY, None) => binary("*")?,
                (operators::DIVIDE, None) => binary("/")?,
                (operators::MODULO, None) => binary("%")?,
                (operators::IN, None) => binary("in")?,
                (operators::LOGICAL_NOT, None) => format!("!{}", args.first()?),
                (operators::NEGATE, None) => format!("-{}", args.first()?),
                (operators::INDEX, None) => format!("{}[{}]", args.first()?, args.get(1)?),
                (operators::CONDITIONAL, None) => {
                    format!("{} ? {} : {}", args.first()?, args.get(1)?, args.get(2)?)
                }
                (name, Some(target)) => format!("{}.{name}({})", operand(target)?, args.join(", ")),
                (name, None) if !name.starts_with('_') && !name.starts_with('@') => {
                    format!("{name}({})", args.join(", "))
                }
                _ => return None,
            }
        }
        _ => return None,
    })
}
