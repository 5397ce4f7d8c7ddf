//! The file source (istiod's `fs://`): a directory tree of multi-document YAML, loaded and watched.
