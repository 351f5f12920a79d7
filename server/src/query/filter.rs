//! Filter expressions: validated and compiled once per query, then evaluated per event.

use chrono_tz::Tz;
use regex::Regex;
use tally_proto::v1::{self, filter::Condition, filter_expression::Expr};

use super::dims::Dim;
use crate::domain::{PropValue, StoredEvent};
use crate::error::{Error, Result};
use crate::sessions::VisitFacts;

const MAX_DEPTH: usize = 10;
const MAX_IN_LIST: usize = 1000;

/// A compiled filter expression.
#[derive(Debug)]
pub enum Predicate {
    /// All hold.
    And(Vec<Predicate>),
    /// Any holds.
    Or(Vec<Predicate>),
    /// Does not hold.
    Not(Box<Predicate>),
    /// One condition on one dimension.
    Test(Dim, Test),
}

/// A condition on a dimension value.
#[derive(Debug)]
pub enum Test {
    /// Regex (also used for every string match kind, case folding included).
    Matches(Regex),
    /// Exact match against a list (values lower-cased when case-insensitive).
    InList {
        /// The accepted values.
        values: Vec<String>,
        /// Compare case-sensitively.
        case_sensitive: bool,
    },
    /// Numeric comparison.
    Numeric(v1::NumericOperator, f64),
    /// Has a value (true) or not (false).
    IsSet(bool),
}

impl Predicate {
    /// Compiles a request expression; `field` names it in errors.
    pub fn compile(expr: &v1::FilterExpression, field: &str) -> Result<Self> {
        Self::compile_at(expr, field, 0)
    }

    fn compile_at(expr: &v1::FilterExpression, field: &str, depth: usize) -> Result<Self> {
        if depth > MAX_DEPTH {
            return Err(Error::invalid(
                field,
                format!("filters may nest at most {MAX_DEPTH} deep"),
            ));
        }
        let list = |list: &v1::FilterExpressionList, name: &str| -> Result<Vec<Predicate>> {
            if list.expressions.is_empty() {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    "needs at least one expression",
                ));
            }
            list.expressions
                .iter()
                .enumerate()
                .map(|(i, e)| Self::compile_at(e, &format!("{field}.{name}.expressions[{i}]"), depth + 1))
                .collect()
        };
        match &expr.expr {
            Some(Expr::AndGroup(l)) => Ok(Self::And(list(l, "and_group")?)),
            Some(Expr::OrGroup(l)) => Ok(Self::Or(list(l, "or_group")?)),
            Some(Expr::NotExpression(inner)) => Ok(Self::Not(Box::new(Self::compile_at(
                inner,
                &format!("{field}.not_expression"),
                depth + 1,
            )?))),
            Some(Expr::Filter(f)) => {
                let field = format!("{field}.filter");
                let dim = Dim::parse(f.dimension.as_ref(), &format!("{field}.dimension"))?;
                Ok(Self::Test(dim, compile_test(f.condition.as_ref(), &field)?))
            }
            None => Err(Error::invalid(
                field,
                "set one of and_group, or_group, not_expression, filter",
            )),
        }
    }

    /// Evaluates on one event.
    pub fn eval(&self, e: &StoredEvent, tz: Tz) -> bool {
        self.eval_with(e, tz, None)
    }

    /// Evaluates on one event of a visit whose facts are known (for the
    /// entry and exit page).
    pub fn eval_with(&self, e: &StoredEvent, tz: Tz, visit: Option<&VisitFacts>) -> bool {
        match self {
            Self::And(all) => all.iter().all(|p| p.eval_with(e, tz, visit)),
            Self::Or(any) => any.iter().any(|p| p.eval_with(e, tz, visit)),
            Self::Not(inner) => !inner.eval_with(e, tz, visit),
            Self::Test(dim, test) => {
                if let (Test::Numeric(op, rhs), Dim::Property(key)) = (test, dim) {
                    return property_number(e, key).is_some_and(|lhs| compare(*op, lhs, *rhs));
                }
                test.eval(dim.value_with(e, tz, "", visit).as_deref())
            }
        }
    }

    /// Evaluates on a value of the one dimension the expression tests
    /// (see [`Predicate::single_dim`]); `None` when the event has none.
    pub fn eval_value(&self, value: Option<&str>) -> bool {
        match self {
            Self::And(all) => all.iter().all(|p| p.eval_value(value)),
            Self::Or(any) => any.iter().any(|p| p.eval_value(value)),
            Self::Not(inner) => !inner.eval_value(value),
            Self::Test(_, test) => test.eval(value),
        }
    }

    /// The dimension every condition tests, when there is exactly one and it
    /// is a standard one (a property's numbers are typed, so not text).
    pub fn single_dim(&self) -> Option<&Dim> {
        let mut dims = Vec::new();
        self.collect_dims(&mut dims);
        let first = *dims.first()?;
        (matches!(first, Dim::Standard(_)) && dims.iter().all(|d| *d == first)).then_some(first)
    }

    /// True when a condition tests the entry or exit page.
    pub fn uses_visit_level(&self) -> bool {
        let mut dims = Vec::new();
        self.collect_dims(&mut dims);
        dims.iter().any(|d| d.is_visit_level())
    }

    fn collect_dims<'a>(&'a self, out: &mut Vec<&'a Dim>) {
        match self {
            Self::And(list) | Self::Or(list) => list.iter().for_each(|p| p.collect_dims(out)),
            Self::Not(inner) => inner.collect_dims(out),
            Self::Test(dim, _) => out.push(dim),
        }
    }
}

impl Test {
    /// Evaluates on a dimension value; `None` when the event has none.
    fn eval(&self, value: Option<&str>) -> bool {
        match self {
            Self::IsSet(want) => value.is_some() == *want,
            Self::Matches(re) => value.is_some_and(|v| re.is_match(v)),
            Self::InList {
                values,
                case_sensitive,
            } => value.is_some_and(|v| match case_sensitive {
                true => values.iter().any(|x| x == v),
                false => values.contains(&v.to_lowercase()),
            }),
            Self::Numeric(op, rhs) => value
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|lhs| compare(*op, lhs, *rhs)),
        }
    }
}

fn compile_test(condition: Option<&Condition>, field: &str) -> Result<Test> {
    match condition {
        Some(Condition::StringMatch(m)) => Ok(Test::Matches(string_match_regex(m, field)?)),
        Some(Condition::InList(list)) => {
            if list.values.is_empty() || list.values.len() > MAX_IN_LIST {
                return Err(Error::invalid(
                    format!("{field}.in_list.values"),
                    format!("needs 1-{MAX_IN_LIST} values"),
                ));
            }
            let values = match list.case_sensitive {
                true => list.values.clone(),
                false => list.values.iter().map(|v| v.to_lowercase()).collect(),
            };
            Ok(Test::InList {
                values,
                case_sensitive: list.case_sensitive,
            })
        }
        Some(Condition::Numeric(n)) => {
            let op = v1::NumericOperator::try_from(n.operator).unwrap_or(v1::NumericOperator::Unspecified);
            if op == v1::NumericOperator::Unspecified {
                return Err(Error::invalid(
                    format!("{field}.numeric.operator"),
                    "operator is required",
                ));
            }
            if !n.value.is_finite() {
                return Err(Error::invalid(
                    format!("{field}.numeric.value"),
                    "value must be finite",
                ));
            }
            Ok(Test::Numeric(op, n.value))
        }
        Some(Condition::IsSet(want)) => Ok(Test::IsSet(*want)),
        None => Err(Error::invalid(
            field,
            "set one of string_match, in_list, numeric, is_set",
        )),
    }
}

/// Compiles any string match into one regex, so case folding is uniform.
pub fn string_match_regex(m: &v1::StringMatch, field: &str) -> Result<Regex> {
    let escaped = regex::escape(&m.value);
    let pattern = match v1::MatchType::try_from(m.match_type).unwrap_or(v1::MatchType::Unspecified) {
        v1::MatchType::Exact => format!("^{escaped}$"),
        v1::MatchType::Contains => escaped,
        v1::MatchType::Prefix => format!("^{escaped}"),
        v1::MatchType::Suffix => format!("{escaped}$"),
        v1::MatchType::Regex => m.value.clone(),
        v1::MatchType::Unspecified => {
            return Err(Error::invalid(
                format!("{field}.match_type"),
                "match_type is required",
            ));
        }
    };
    regex::RegexBuilder::new(&pattern)
        .case_insensitive(!m.case_sensitive)
        .size_limit(1 << 20)
        .build()
        .map_err(|err| {
            Error::invalid(
                format!("{field}.value"),
                format!("invalid regular expression: {err}"),
            )
        })
}

fn property_number(e: &StoredEvent, key: &str) -> Option<f64> {
    match e.properties.get(key)?.value.as_ref()? {
        PropValue::Num(n) => Some(*n),
        PropValue::Str(s) => s.trim().parse().ok(),
        PropValue::Bool(_) => None,
    }
}

fn compare(op: v1::NumericOperator, lhs: f64, rhs: f64) -> bool {
    use v1::NumericOperator as O;
    match op {
        O::Equal => lhs == rhs,
        O::LessThan => lhs < rhs,
        O::LessThanOrEqual => lhs <= rhs,
        O::GreaterThan => lhs > rhs,
        O::GreaterThanOrEqual => lhs >= rhs,
        O::Unspecified => false,
    }
}
