//! Named health components (sinks, endpoint, Redis) feeding `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

/// A component's health flag; cheap to clone, set by whoever owns the component.
#[derive(Debug, Clone)]
pub struct HealthFlag {
    flag: Arc<AtomicBool>,
}

impl HealthFlag {
    /// Marks the component healthy or not.
    pub fn set_healthy(&self, healthy: bool) {
        self.flag.store(healthy, Ordering::Relaxed);
    }

    /// Current value.
    pub fn is_healthy(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Component {
    name: String,
    required: bool,
    flag: HealthFlag,
}

/// One component in the readiness detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    /// Component name (e.g. `sink:file`, `redis`).
    pub name: String,
    /// Whether readiness depends on it.
    pub required: bool,
    /// Current health.
    pub healthy: bool,
}

/// Registry of named components; cloneable handle.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<RwLock<Vec<Component>>>,
}

impl Health {
    /// Registers `name` (initially unhealthy) and returns its flag. Registering an existing name
    /// updates `required` and returns the same flag, so a restarted component keeps its entry.
    pub fn register(&self, name: &str, required: bool) -> HealthFlag {
        let mut g = self.components.write();
        if let Some(c) = g.iter_mut().find(|c| c.name == name) {
            c.required = required;
            return c.flag.clone();
        }
        let flag = HealthFlag {
            flag: Arc::new(AtomicBool::new(false)),
        };
        g.push(Component {
            name: name.to_owned(),
            required,
            flag: flag.clone(),
        });
        flag
    }

    /// Status of every component in registration order.
    pub fn report(&self) -> Vec<ComponentStatus> {
        self.components
            .read()
            .iter()
            .map(|c| ComponentStatus {
                name: c.name.clone(),
                required: c.required,
                healthy: c.flag.is_healthy(),
            })
            .collect()
    }

    /// Whether every required component is healthy.
    pub fn all_required_healthy(&self) -> bool {
        self.components
            .read()
            .iter()
            .all(|c| !c.required || c.flag.is_healthy())
    }
}
