//! Which OAuth client refreshes a connection: the provider app configured
//! for its provider, or the project's own client for it (a custom app).
//!
//! The registry is swapped as a whole on a config reload; readers take a
//! cheap snapshot (`Arc`). It holds client secrets in memory only as
//! `SecretString`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::provider::ProviderApp;

/// The unit that limits, circuit breakers and alerts apply to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppKey {
    /// The provider slug.
    pub provider: String,
    /// The OAuth client id at that provider.
    pub client_id: String,
}

impl std::fmt::Display for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.client_id)
    }
}

impl ProviderApp {
    /// This app's key.
    pub fn key(&self) -> AppKey {
        AppKey {
            provider: self.slug.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

/// Apps by provider slug.
type DefaultApps = HashMap<String, Arc<ProviderApp>>;
/// Apps by (project, provider slug).
type CustomApps = HashMap<(String, String), Arc<ProviderApp>>;

/// The provider apps in force.
#[derive(Debug, Default)]
pub struct AppRegistry {
    /// Configured apps by provider slug.
    defaults: RwLock<Arc<DefaultApps>>,
    /// Projects' own apps by (project, provider slug).
    custom: RwLock<Arc<CustomApps>>,
}

impl AppRegistry {
    /// A registry of the configured apps.
    pub fn new(defaults: Vec<ProviderApp>) -> Self {
        let registry = Self::default();
        registry.replace_defaults(defaults);
        registry
    }

    /// The app that refreshes `project`'s connections of `provider`: the
    /// project's own if it registered one, else the configured one.
    pub fn resolve(&self, project: &str, provider: &str) -> Option<Arc<ProviderApp>> {
        let custom = read(&self.custom);
        if let Some(app) = custom.get(&(project.to_owned(), provider.to_owned())) {
            return Some(Arc::clone(app));
        }
        self.provider(provider)
    }

    /// The configured app of `provider`.
    pub fn provider(&self, provider: &str) -> Option<Arc<ProviderApp>> {
        read(&self.defaults).get(provider).cloned()
    }

    /// The configured apps, by slug.
    pub fn configured(&self) -> Vec<Arc<ProviderApp>> {
        let mut apps: Vec<_> = read(&self.defaults).values().cloned().collect();
        apps.sort_by(|a, b| a.slug.cmp(&b.slug));
        apps
    }

    /// Every app in force, configured ones first.
    pub fn all(&self) -> Vec<Arc<ProviderApp>> {
        let mut apps: Vec<_> = read(&self.defaults).values().cloned().collect();
        apps.sort_by(|a, b| a.slug.cmp(&b.slug));
        let mut custom: Vec<_> = read(&self.custom).values().cloned().collect();
        custom.sort_by_key(|a| a.key());
        apps.extend(custom);
        apps
    }

    /// Replaces the configured apps (a config reload).
    pub fn replace_defaults(&self, apps: Vec<ProviderApp>) {
        let map = apps.into_iter().map(|a| (a.slug.clone(), Arc::new(a))).collect();
        *self.defaults.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// Registers (or replaces) `project`'s own app for its provider.
    pub fn set_custom(&self, project: &str, app: ProviderApp) {
        let mut guard = self.custom.write().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::clone(&guard);
        map.insert((project.to_owned(), app.slug.clone()), Arc::new(app));
        *guard = Arc::new(map);
    }

    /// Removes `project`'s own app for `provider`; true if there was one.
    pub fn remove_custom(&self, project: &str, provider: &str) -> bool {
        let mut guard = self.custom.write().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::clone(&guard);
        let removed = map.remove(&(project.to_owned(), provider.to_owned())).is_some();
        *guard = Arc::new(map);
        removed
    }
}

fn read<T>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    Arc::clone(&lock.read().unwrap_or_else(|e| e.into_inner()))
}
