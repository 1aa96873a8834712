#[sluice::transform]
fn run(_record: sluice::Record, _out: &mut sluice::Writer) {}

fn main() {}
