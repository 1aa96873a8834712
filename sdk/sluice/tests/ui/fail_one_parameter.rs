#[sluice::transform]
fn run(_record: sluice::Record) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
