//! Content-addressed package store and cluster images (work in progress).
