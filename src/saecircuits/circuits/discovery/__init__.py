"""Circuit discovery methods, one module a method: each scores heads or edges."""
