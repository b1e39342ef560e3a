//! ragpool operator.
