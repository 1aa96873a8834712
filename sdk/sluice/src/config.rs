//! Deploy-time configuration: the key/value pairs the deployer passed, handed to the guest once by
//! `init`. Stored per thread (a Wasm instance has one thread; native tests run many harnesses in
//! parallel, each on its own thread).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::str::FromStr;

use crate::{Error, Result};

/// The transform's deploy-time configuration. Cloning is cheap (a reference count).
#[derive(Clone, Default, Debug)]
pub struct Config {
    entries: Rc<BTreeMap<String, String>>,
}

thread_local! {
    static CURRENT: RefCell<Config> = RefCell::new(Config::default());
}

/// The configuration this transform was deployed with.
pub fn config() -> Config {
    CURRENT.with(|current| current.borrow().clone())
}

pub(crate) fn set_current(config: Config) {
    CURRENT.with(|current| *current.borrow_mut() = config);
}

impl Config {
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Config { entries: Rc::new(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect()) }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The value of a key the transform cannot run without.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| Error::msg(format!("missing required config key `{key}`")))
    }

    /// Parse a value (`"42"`, `"true"`); `Ok(None)` if the key is absent.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|e: T::Err| Error::msg(format!("config key `{key}` = {raw:?}: {e}"))),
        }
    }

    /// A comma-separated list (`"email,phone"`), trimmed, empty items dropped.
    pub fn list(&self, key: &str) -> Vec<&str> {
        self.get(key).map(|raw| raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }

    /// A comma-separated list of regular expressions, each anchored to match a whole name (as Kafka
    /// Connect's `table.include.list` and `topics.regex`); a pattern that does not compile is an
    /// error naming the key. With the SDK's `regex` feature.
    #[cfg(feature = "regex")]
    pub fn regexes(&self, key: &str) -> Result<Vec<regex::Regex>> {
        self.list(key)
            .into_iter()
            .map(|pattern| {
                regex::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| Error::msg(format!("{key}: '{pattern}' is not a regular expression: {e}")))
            })
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(all(test, feature = "regex"))]
mod regex_tests {
    use super::Config;

    #[test]
    fn regexes_match_whole_names_and_a_bad_pattern_names_its_key() {
        let config = Config::from_pairs([("include", "public\\.orders, shop\\..*"), ("bad", "(")]);
        let include = config.regexes("include").unwrap();
        assert!(include.iter().any(|re| re.is_match("public.orders")) && include.iter().any(|re| re.is_match("shop.x")));
        assert!(!include.iter().any(|re| re.is_match("public.orders_old")), "anchored at both ends");
        assert!(config.regexes("missing").unwrap().is_empty());
        assert!(config.regexes("bad").unwrap_err().to_string().contains("bad: '(' is not a regular expression"));
    }
}
