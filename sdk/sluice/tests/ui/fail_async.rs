#[sluice::transform]
async fn run(_record: sluice::Record, _out: &mut sluice::Writer) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
