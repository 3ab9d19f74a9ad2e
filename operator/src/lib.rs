//! Lodger's operator: places MigratableJobs on idle desktops and migrates them live
