{#- In sys-monitor's template and every handler or netlog template: remove
    sysmon's packages (and the loose files of a deployment from before the
    packages).  Debian's python3-* packages stay: other software may use
    them.  The data in sys-monitor's /home stays. -#}
sysmon-packages-removed:
  pkg.removed:
    - pkgs:
      - sysmon
      - sysmon-handler
      - sysmon-netlog

{%- for path in ['/usr/lib/sysmon', '/usr/lib/netlog', '/var/cache/sysmon-packages'] %}
sysmon-leftover-{{ path }}:
  file.absent:
    - name: {{ path }}
    - require:
      - pkg: sysmon-packages-removed
{%- endfor %}
