//! `ms-bench storage` (being written).
use crate::SuiteArgs;

pub fn run(_args: &SuiteArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("the storage suite is not written yet")
}

pub fn child(role: &str, _rest: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("unknown storage child role {role:?}")
}
