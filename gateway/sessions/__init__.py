"""Server-side conversations: what a session stores and how its history is kept within bounds."""
