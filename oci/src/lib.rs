//! OCI images for Outpost: one registry client shared by the hub (tag → digest
//! resolution) and the agent (resumable pulls), a content-addressed blob store,
//! safe layer unpacking, and OCI image layout import.
