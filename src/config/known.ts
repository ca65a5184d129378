/** Well-known registries: the API endpoint behind a registry host name, and aliases. */
export interface KnownRegistry {
  endpoint: string;
  libraryPrefix: boolean;
  aliases: string[];
}

export const KNOWN_REGISTRIES: Record<string, KnownRegistry> = {
  // docker.io is only a name; the API lives on registry-1.docker.io (containerd hosts.go).
  'docker.io': { endpoint: 'https://registry-1.docker.io', libraryPrefix: true, aliases: ['index.docker.io', 'registry-1.docker.io'] },
  'gcr.io': { endpoint: 'https://gcr.io', libraryPrefix: false, aliases: [] },
  'mcr.microsoft.com': { endpoint: 'https://mcr.microsoft.com', libraryPrefix: false, aliases: [] },
  'quay.io': { endpoint: 'https://quay.io', libraryPrefix: false, aliases: [] },
  'registry.k8s.io': { endpoint: 'https://registry.k8s.io', libraryPrefix: false, aliases: ['k8s.gcr.io'] },
  'ghcr.io': { endpoint: 'https://ghcr.io', libraryPrefix: false, aliases: [] },
};
