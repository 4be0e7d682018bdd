//! Conversion from k8s-openapi objects to the model's inputs.
