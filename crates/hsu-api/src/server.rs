//! Binding the listeners and serving HTTP/1.1, HTTP/2 (gRPC) on them. (being written)
