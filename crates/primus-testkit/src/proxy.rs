//! TCP proxy with cut/heal.
