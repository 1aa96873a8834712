// The classic form: no state, no init.
use sluice::testing::Harness;
use sluice::{Record, Result, Writer};

#[sluice::transform]
fn run(record: Record, out: &mut Writer) -> Result<()> {
    out.write(record);
    Ok(())
}

fn main() {
    assert_eq!(Harness::new(run).process(vec![Record::new("a")]).unwrap().len(), 1);
}
