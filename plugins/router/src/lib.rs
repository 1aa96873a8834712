//! `router`: fan records out to output topics by the value of a JSON field.
//!
//! Configuration:
//! - `field` (required): a dotted path into the value, e.g. `region` or `customer.tier`.
//! - `routes` (required): `value:topic` pairs, comma-separated, e.g. `eu:orders-eu,us:orders-us`.
//!   Every topic must be one of the transform's deployed outputs.
//! - `unmatched`: records whose field is missing, not a string/number, or not in `routes`: `default`
//!   (the first output topic, the default) or `drop`.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice::{Config, Record, Result, Writer};

#[derive(Clone, Debug)]
pub struct Router {
    path: Vec<String>,
    routes: BTreeMap<String, String>,
    drop_unmatched: bool,
}

impl Router {
    pub fn from_config(config: &Config) -> Result<Router> {
        let path: Vec<String> = config.require("field")?.split('.').map(str::to_owned).collect();
        let mut routes = BTreeMap::new();
        for pair in config.list("routes") {
            let Some((value, topic)) = pair.split_once(':') else {
                sluice::bail!("config `routes` entry {pair:?} is not `value:topic`");
            };
            routes.insert(value.trim().to_owned(), topic.trim().to_owned());
        }
        if routes.is_empty() {
            sluice::bail!("config `routes` must have at least one `value:topic` pair");
        }
        let drop_unmatched = match config.get("unmatched").unwrap_or("default") {
            "default" => false,
            "drop" => true,
            other => sluice::bail!("config `unmatched` = {other:?}; expected `default` or `drop`"),
        };
        Ok(Router { path, routes, drop_unmatched })
    }

    /// The topic a value routes to, if any.
    pub fn route(&self, value: &Value) -> Option<&str> {
        self.route_field(self.path.iter().try_fold(value, |v, key| v.get(key))?)
    }

    /// The topic for the routing field's value (already found).
    fn route_field(&self, field: &Value) -> Option<&str> {
        let key = match field {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        self.routes.get(&key).map(String::as_str)
    }
}

/// Routes each record by its field; the route table is built once, at deploy time.
#[sluice::transform(init = Router::from_config)]
pub fn run(router: &Router, record: Record, out: &mut Writer) -> Result<()> {
    // Only the routing field is built (`value_json_at`); a value that is not JSON goes unmatched.
    let field = record.value_json_at(&router.path).ok().flatten();
    let topic = field.and_then(|field| router.route_field(&field).map(str::to_owned));
    match topic {
        Some(topic) => out.write_to(&topic, record),
        None if router.drop_unmatched => Ok(()),
        None => {
            out.write(record);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice::Record;
    use sluice::testing::Harness;

    fn harness() -> Harness<super::Router> {
        Harness::stateful(super::Router::from_config, super::run)
            .outputs(&["orders-other", "orders-eu", "orders-us"])
            .config("field", "region")
            .config("routes", "eu:orders-eu, us:orders-us")
    }

    fn batch() -> Vec<Record> {
        [json!({"region": "eu"}), json!({"region": "us"}), json!({"region": "apac"}), json!({}), json!({"region": "eu"})]
            .iter()
            .map(|v| Record::from_json(v).unwrap())
            .chain([Record::new("not json")])
            .collect()
    }

    #[test]
    fn routes_by_field_and_sends_the_rest_to_the_default_output() {
        let topics: Vec<String> = harness().process(batch()).unwrap().into_iter().map(|w| w.topic).collect();
        assert_eq!(topics, ["orders-eu", "orders-us", "orders-other", "orders-other", "orders-eu", "orders-other"]);
    }

    #[test]
    fn unmatched_can_be_dropped() {
        let written = harness().config("unmatched", "drop").process(batch()).unwrap();
        assert_eq!(written.len(), 3);
    }

    #[test]
    fn a_route_to_an_undeployed_topic_is_an_error() {
        let error = harness().outputs(&["orders-other", "orders-eu"]).process(batch()).unwrap_err();
        assert!(error.message().contains("`orders-us` is not one of this transform's outputs"), "{error}");
    }

    #[test]
    fn bad_routes_are_refused_at_init() {
        let error = harness().config("routes", "eu-orders-eu").process(vec![]).unwrap_err();
        assert!(error.message().contains("not `value:topic`"), "{error}");
    }
}
