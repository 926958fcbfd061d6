//! Subsystems: named groups of configuration (bdev, nvmf, ...) that can write the RPCs which
//! recreate their current state, listed dependencies first.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::registry::{Registry, read, write};

pub type WriteConfig = Arc<dyn Fn() -> Vec<Value> + Send + Sync>;

#[derive(Clone)]
pub struct Subsystem {
    pub name: String,
    pub depends_on: Vec<String>,
    /// `[{"method": .., "params": {..}}, ..]` that recreate the subsystem's state.
    pub write_config: WriteConfig,
}

impl Subsystem {
    pub fn new(
        name: &str,
        depends_on: &[&str],
        write_config: impl Fn() -> Vec<Value> + Send + Sync + 'static,
    ) -> Subsystem {
        Subsystem {
            name: name.to_owned(),
            depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
            write_config: Arc::new(write_config),
        }
    }
}

impl std::fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subsystem")
            .field("name", &self.name)
            .field("depends_on", &self.depends_on)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Adds a subsystem, replacing (in place) one of the same name.
    pub fn register_subsystem(&self, s: Subsystem) {
        let mut list = write(&self.subsystems);
        match list.iter_mut().find(|x| x.name == s.name) {
            Some(x) => *x = s,
            None => list.push(s),
        }
    }

    /// Subsystems with every dependency before its dependents (the order SPDK's client relies
    /// on), otherwise in registration order. Dependencies on unregistered names are dropped
    /// from `depends_on`, since the client looks each one up in this same list.
    pub fn subsystems(&self) -> Vec<Subsystem> {
        let mut left: Vec<Subsystem> = read(&self.subsystems).clone();
        let known: Vec<String> = left.iter().map(|s| s.name.clone()).collect();
        for s in &mut left {
            s.depends_on.retain(|d| {
                let ok = known.contains(d);
                if !ok {
                    tracing::warn!(subsystem = %s.name, dependency = %d, "unknown dependency");
                }
                ok
            });
        }
        let mut out: Vec<Subsystem> = Vec::with_capacity(left.len());
        // Repeatedly take the first registered subsystem whose dependencies are all out.
        while let Some(i) = left.iter().position(|s| {
            s.depends_on
                .iter()
                .all(|d| out.iter().any(|o| &o.name == d))
        }) {
            out.push(left.remove(i));
        }
        if !left.is_empty() {
            tracing::warn!("subsystem dependency cycle; listing the rest in registration order");
            out.append(&mut left);
        }
        out
    }

    /// The config entries of one subsystem, `None` if it is not registered.
    pub fn subsystem_config(&self, name: &str) -> Option<Vec<Value>> {
        let writer = read(&self.subsystems)
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.write_config.clone())?;
        // Called without the lock: writers may look at the registry themselves.
        Some(writer())
    }

    /// `{"subsystems":[{"subsystem":..,"config":[..]},..]}`, as SPDK's client builds save_config.
    pub fn save_config(&self) -> Value {
        let list: Vec<Value> = self
            .subsystems()
            .into_iter()
            .map(|s| json!({ "subsystem": s.name, "config": (s.write_config)() }))
            .collect();
        json!({ "subsystems": list })
    }
}

pub fn register_subsystem(s: Subsystem) {
    Registry::global().register_subsystem(s);
}

pub fn subsystems() -> Vec<Subsystem> {
    Registry::global().subsystems()
}

pub fn subsystem_config(name: &str) -> Option<Vec<Value>> {
    Registry::global().subsystem_config(name)
}

pub fn save_config() -> Value {
    Registry::global().save_config()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(reg: &Registry) -> Vec<String> {
        reg.subsystems().into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn dependency_order_is_stable() {
        let reg = Registry::new();
        for (name, deps) in [
            ("nvmf", &["bdev", "sock"][..]),
            ("bdev", &["accel", "iobuf"]),
            ("sock", &[]),
            ("accel", &["iobuf"]),
            ("iobuf", &[]),
            ("scheduler", &[]),
        ] {
            reg.register_subsystem(Subsystem::new(name, deps, Vec::new));
        }
        assert_eq!(
            names(&reg),
            ["sock", "iobuf", "accel", "bdev", "nvmf", "scheduler"]
        );
    }

    #[test]
    fn unknown_dependencies_and_cycles_do_not_break_listing() {
        let reg = Registry::new();
        reg.register_subsystem(Subsystem::new("a", &["b"], Vec::new));
        reg.register_subsystem(Subsystem::new("b", &["a"], Vec::new));
        reg.register_subsystem(Subsystem::new("c", &["missing"], Vec::new));
        let list = reg.subsystems();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].name, "c");
        assert!(list[0].depends_on.is_empty());
    }

    #[test]
    fn save_config_shape_and_replacement() {
        let reg = Registry::new();
        reg.register_subsystem(Subsystem::new("bdev", &["iobuf"], || {
            vec![json!({"method": "bdev_wait_for_examine"})]
        }));
        reg.register_subsystem(Subsystem::new("iobuf", &[], Vec::new));
        assert_eq!(
            reg.save_config().to_string(),
            r#"{"subsystems":[{"subsystem":"iobuf","config":[]},{"subsystem":"bdev","config":[{"method":"bdev_wait_for_examine"}]}]}"#
        );
        reg.register_subsystem(Subsystem::new("iobuf", &[], || vec![json!(1)]));
        assert_eq!(reg.subsystem_config("iobuf"), Some(vec![json!(1)]));
        assert_eq!(reg.subsystem_config("nope"), None);
        assert_eq!(names(&reg), ["iobuf", "bdev"]);
    }
}
