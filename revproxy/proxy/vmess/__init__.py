"""proxy/vmess package."""
