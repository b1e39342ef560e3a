//! ragpool api.
