// Init returns state; the transform gets it on every call. An associated function is a valid path.
use sluice::testing::Harness;
use sluice::{Config, Record, Result, Writer};

struct Filter {
    keep: String,
}

impl Filter {
    fn from_config(config: &Config) -> Result<Filter> {
        Ok(Filter { keep: config.require("keep")?.to_owned() })
    }
}

#[sluice::transform(init = Filter::from_config)]
fn run(filter: &Filter, record: Record, out: &mut Writer) -> Result<()> {
    if record.value_str()? == filter.keep {
        out.write(record);
    }
    Ok(())
}

fn main() {
    let written = Harness::stateful(Filter::from_config, run)
        .config("keep", "b")
        .process(vec![Record::new("a"), Record::new("b"), Record::new("c")])
        .unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].record.value.as_deref(), Some(&b"b"[..]));
}
