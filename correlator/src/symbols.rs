//! The engine's interned names: resources (with their per-resource state), span profiles
//! and long strings.
//!
//! A *profile* is the low-cardinality part of a span, interned as one unit: service,
//! operation, policy and policy version. One lookup per event covers all four, and a pending
//! check pays 4 bytes for them.

use crate::compact::{long_strings, LongStrings};
use crate::intern::{rehash_name, Entry, Interner, Name};
use crate::resources::ResourceState;
use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;
use toctou_schema::conventions::OPERATION_CREATE;

pub(crate) struct Profile {
    pub service: Box<str>,
    pub operation: Box<str>,
    pub policy: Option<Box<str>>,
    pub policy_version: Option<Box<str>>,
    /// The operation is `create` (duplicate and partial creates).
    pub is_create: bool,
}

impl crate::intern::KeyBytes for Profile {
    fn key_bytes(&self) -> usize {
        let opt = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        self.service.len() + self.operation.len() + opt(&self.policy) + opt(&self.policy_version)
    }
}

type ProfileKey<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);

fn profile_key(p: &Profile) -> ProfileKey<'_> {
    (
        &p.service,
        &p.operation,
        p.policy.as_deref(),
        p.policy_version.as_deref(),
    )
}

fn rehash_profile(b: &DefaultHashBuilder, e: &Entry<Profile, ()>) -> u64 {
    b.hash_one(profile_key(&e.key))
}

pub(crate) struct Symbols {
    pub resources: Interner<Name, ResourceState>,
    pub profiles: Interner<Profile, ()>,
    pub long: LongStrings,
    /// Recently used profiles, direct-mapped by a cheap key: a hit costs four short string
    /// compares instead of hashing four strings.
    recent_profiles: [(u32, u32); RECENT],
}

const RECENT: usize = 64;

/// A cheap spread of a profile's key over the recent-profile slots (no full hash).
fn recent_index(service: &str, operation: &str, policy_version: Option<&str>) -> usize {
    let tail = |s: &str| s.as_bytes().last().copied().unwrap_or(0) as usize;
    let n = service.len() * 7 + operation.len() * 13 + tail(service) * 3 + tail(operation);
    let n = n + policy_version.map_or(0, |v| v.len() * 5 + tail(v) * 11);
    n % RECENT
}

impl Symbols {
    /// Bytes of long strings, long resource names and profiles held by the state, counted
    /// as they are interned and released (no walk).
    pub fn interned_bytes(&self) -> usize {
        self.long.key_bytes() + self.resources.key_bytes() + self.profiles.key_bytes()
    }

    pub fn new() -> Symbols {
        Symbols {
            resources: Interner::new(rehash_name),
            profiles: Interner::new(rehash_profile),
            long: long_strings(),
            recent_profiles: [(u32::MAX, 0); RECENT],
        }
    }

    /// The resource's slot, with a reference taken; the name's allocation is reused when new.
    pub fn acquire_resource(&mut self, name: String) -> u32 {
        self.resources.acquire_string(name)
    }

    pub fn acquire_profile(
        &mut self,
        service: &str,
        operation: &str,
        policy: Option<&str>,
        policy_version: Option<&str>,
    ) -> u32 {
        let key: ProfileKey<'_> = (service, operation, policy, policy_version);
        let r = recent_index(service, operation, policy_version);
        let (slot, gen) = self.recent_profiles[r];
        if let Some(p) = self.profiles.live_key(slot, gen) {
            if profile_key(p) == key {
                return self.profiles.retain(slot);
            }
        }
        let hash = self.profiles.hash(&key);
        let slot = self.profiles.acquire(
            hash,
            |p| profile_key(p) == key,
            || Profile {
                service: service.into(),
                operation: operation.into(),
                policy: policy.map(Into::into),
                policy_version: policy_version.map(Into::into),
                is_create: operation == OPERATION_CREATE,
            },
        );
        self.recent_profiles[r] = (slot, self.profiles.gen(slot));
        slot
    }

    pub fn resource_name(&self, slot: u32) -> &str {
        self.resources.key(slot).as_str()
    }

    pub fn profile(&self, slot: u32) -> &Profile {
        self.profiles.key(slot)
    }
}
