//! Tests of the Helm chart (see tests/).
