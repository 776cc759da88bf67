//! MariaDB sandboxes: see module docs once written.
