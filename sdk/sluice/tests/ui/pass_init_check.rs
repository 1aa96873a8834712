// The classic form with an init that only checks the configuration.
use sluice::testing::Harness;
use sluice::{Config, Record, Result, Writer};

fn setup(config: &Config) -> Result<()> {
    config.require("field")?;
    Ok(())
}

#[sluice::transform(init = setup)]
fn run(record: Record, out: &mut Writer) -> Result<()> {
    out.write(record);
    Ok(())
}

fn main() {
    assert!(Harness::new(run).init(setup).process(vec![]).is_err());
    assert_eq!(Harness::new(run).init(setup).config("field", "x").process(vec![Record::new("a")]).unwrap().len(), 1);
}
