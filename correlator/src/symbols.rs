//! The engine's interned names: resources (with their per-resource state), span profiles
//! and long strings.
//!
//! A *profile* is the low-cardinality part of a span, interned as one unit: service,
//! operation, policy and policy version. One lookup per event covers all four, and a pending
//! check pays 4 bytes for them.

use crate::compact::{long_strings, LongStrings};
use crate::intern::{rehash_str, Entry, Interner};
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
    pub resources: Interner<Box<str>, ResourceState>,
    pub profiles: Interner<Profile, ()>,
    pub long: LongStrings,
}

impl Symbols {
    pub fn new() -> Symbols {
        Symbols {
            resources: Interner::new(rehash_str),
            profiles: Interner::new(rehash_profile),
            long: long_strings(),
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
        let hash = self.profiles.hash(&key);
        self.profiles.acquire(
            hash,
            |p| profile_key(p) == key,
            || Profile {
                service: service.into(),
                operation: operation.into(),
                policy: policy.map(Into::into),
                policy_version: policy_version.map(Into::into),
                is_create: operation == OPERATION_CREATE,
            },
        )
    }

    pub fn resource_name(&self, slot: u32) -> &str {
        self.resources.key(slot)
    }

    pub fn profile(&self, slot: u32) -> &Profile {
        self.profiles.key(slot)
    }
}
